"""Reading a /tag request: the product as JSON or as a multipart form with its photo, every parse error a
4xx naming the field; uploaded photos kept content-addressed, and removed again when the product is
refused."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import parse_options_header

from ..data.images import CHECK_SIDE, ImageError, decode_image
from ..data.schema import Product
from ..data.validate import Limits, validate_row
from .runtime import ServiceConfig


async def read_product(request: Request, cfg: ServiceConfig) -> tuple[Product, Path]:
    """The product of a /tag request and the root of its photo; 4xx naming the field otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        _check_utf8_field(await request.body(), request.headers["content-type"], "product")
        try:
            form = await request.form()
        except Exception as e:  # starlette's multipart parser raises several types for a broken body
            raise HTTPException(400, f"the multipart body cannot be read ({type(e).__name__})") from None
        raw, photo = _form_json(form.get("product")), form.get("photo")
        if isinstance(photo, str):
            raise HTTPException(422, "photo: must be a file upload")
        if photo is not None:
            if not isinstance(raw, dict):
                raise HTTPException(422, f"product: a product is a JSON object, not {type(raw).__name__}")
            root, kept = await run_in_threadpool(_keep_upload, await photo.read(), raw, cfg)
            try:
                product = await run_in_threadpool(_validated, raw, root, cfg)
            except HTTPException:
                UPLOADS.release(root / raw["image"], kept, refused=True)  # a refused product leaves no photo
                raise
            UPLOADS.release(root / raw["image"], kept, refused=False)
            return product, root
    elif kind in ("application/json", ""):
        raw = _json(await request.body(), "body", 400)
    else:
        raise HTTPException(415, f"content-type {kind!r}: send application/json or multipart/form-data")
    # validation opens the photo: off the event loop
    return await run_in_threadpool(_validated, raw, cfg.image_root, cfg), cfg.image_root or Path(".")


def _check_utf8_field(body: bytes, content_type: str, name: str) -> None:
    """422 when the multipart text field `name` is not UTF-8 (the form parser would read it as Latin-1)."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise HTTPException(400, "content-type: a multipart body needs a boundary")
    for part in body.split(b"--" + boundary)[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        if f'name="{name}"'.encode() in head and b"filename=" not in head:
            try:
                data.removesuffix(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                raise HTTPException(422, f"{name}: not UTF-8 (byte 0x{data[e.start]:02x} at {e.start + 1})") from None


def _form_json(value: Any) -> Any:
    if value is None:
        raise HTTPException(422, "product: missing (a form field holding the product as JSON)")
    if not isinstance(value, str):
        raise HTTPException(422, "product: must be a JSON text field, not a file")
    return _json(value, "product", 422)


def _json(text: str | bytes, field: str, status: int) -> Any:
    """Decoded JSON, or an HTTP error naming `field`: bad syntax, bad UTF-8, nesting too deep to decode,
    or a number too long to convert are all the sender's input, never a 500."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(status, f"{field}: not JSON ({e})") from None
    except RecursionError:
        raise HTTPException(status, f"{field}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of thousands of digits (Python's int-string limit)
        raise HTTPException(status, f"{field}: a value cannot be read ({e})") from None


def _validated(raw: Any, image_root: Path | None, cfg: ServiceConfig) -> Product:
    """The catalog's row rules (online: a photo that cannot be read rejects the product)."""
    if not isinstance(raw, dict):
        raise HTTPException(422, f"body: a product is a JSON object, not {type(raw).__name__}")
    if raw.get("image") is not None and image_root is None:
        raise HTTPException(422, "image: this service has no image root (--image-root); upload the photo instead")
    product, issues = validate_row(raw, "request", 1, image_root, Limits(strict_images=True))
    errors = [f"{i.field}: {i.reason}" for i in issues if i.severity == "error"]
    if product is None or errors:
        raise HTTPException(422, "; ".join(errors) or "the product was rejected")
    return product


class _Uploads:
    """Which uploaded photos requests hold now, and which a stored product uses: a refused product's photo
    is removed only when no other request holds it and no product was stored with it."""

    def __init__(self):
        self.lock, self.held, self.used = threading.Lock(), collections.Counter(), set()

    def hold(self, path: Path) -> None:
        with self.lock:
            self.held[path] += 1

    def release(self, path: Path, written: Path | None, refused: bool) -> None:
        with self.lock:
            self.held[path] -= 1
            if self.held[path] <= 0:
                del self.held[path]
            if not refused:
                self.used.add(path)
            elif written is not None and path not in self.held and path not in self.used:
                path.unlink(missing_ok=True)


UPLOADS = _Uploads()


def _keep_upload(data: bytes, raw: dict, cfg: ServiceConfig) -> tuple[Path, Path | None]:
    """Check an uploaded photo and keep it (content-addressed) in the uploads folder; returns that folder
    and the file when this request wrote it (None when it was there before). The caller's product gets
    the photo as its image. Written under a name of its own and renamed: concurrent uploads of the same
    photo never share a temporary file."""
    try:
        decode_image(data, "photo", min_side=CHECK_SIDE)  # a check: no full-size pixels held
    except ImageError as e:
        raise HTTPException(422, f"photo: {e}") from None
    name = hashlib.sha256(data).hexdigest()[:32] + ".img"
    cfg.uploads.mkdir(parents=True, exist_ok=True)
    path = cfg.uploads / name
    written = None
    UPLOADS.hold(path)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=cfg.uploads, prefix=name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        written = path
    raw["image"] = name
    return cfg.uploads, written
