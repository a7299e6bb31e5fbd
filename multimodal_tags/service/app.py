"""The FastAPI app of `mmtags serve`: tag products, take feedback, read tags and statistics.

    POST /tag                 a product as JSON (photo: a path inside the image root), or multipart
                              with `product` (JSON) and `photo` (the file); returns its tags
    POST /feedback            one event or a list (feedback/events.py); stored before the reply
    GET  /products/{id}/tags  the stored tags of a product
    GET  /stats               acceptance rate (overall, per tag key, over time), batching, model
    GET  /health              liveness and the model in use
Bad input gets a 4xx naming the field. With API keys (service/auth.py) every route but /health needs one
in X-API-Key, with the scope the route names (read, write, review); no reply names a server path.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import collections
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, Field

from ..data.images import CHECK_SIDE, ImageError, decode_image
from ..data.schema import Product
from ..data.validate import Limits, validate_row
from ..feedback.events import FeedbackEvent, Interaction
from .batching import TagBatcher
from .limits import BodyLimit
from .runtime import ModelThread, ReadThread, ServiceConfig, StoreThread

MAX_EVENTS_PER_REQUEST = 10_000
LOG = logging.getLogger("multimodal_tags.service")


class ProductIn(BaseModel):
    """A product to tag (the catalog's fields; unknown fields are kept as extra)."""

    id: str | int = Field(description="the product's id in the shop")
    title: str = ""
    description: str = ""
    image: str | None = Field(None, description="a photo path inside the service's image root")
    category: str | None = None
    language: str = ""


TAG_BODY = {"required": True, "content": {
    "application/json": {"schema": ProductIn.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["product"], "properties": {
        "product": {"type": "string", "description": "the product as JSON"},
        "photo": {"type": "string", "format": "binary"}}}}}}


class Service:
    """What the routes share: the config, the model and store threads, the batcher."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg, self.started = cfg, time.time()
        self.model, self.store, self.reads = ModelThread(cfg), StoreThread(cfg), ReadThread(cfg)
        self.batcher = TagBatcher(lambda groups: self.model.run(self.model.tag, groups), cfg.max_batch,
                                  cfg.batch_wait_s)
        self.background: set[asyncio.Task] = set()  # re-fits in flight (kept referenced until done)

    async def close(self) -> None:
        await self.batcher.stop()
        self.model.close()
        self.store.close()
        self.reads.close()

    def stats(self) -> dict:
        """Feedback statistics (store thread) with the batching counters and the model's calibration."""
        cal = self.model.learner.calibration
        return {**self.store.fb.stats(), "model_id": self.model.learner.model_id,
                "batches": self.batcher.batches, "tagged": self.batcher.products,
                "mean_batch": self.batcher.products / max(self.batcher.batches, 1),
                "calibration": {"events": cal.events, "rules": len(cal.rules), "new_tags": sorted(cal.new_tags)}}


def create_app(cfg: ServiceConfig) -> FastAPI:
    """The service over one model and one store (the model loads here, before the first request)."""
    svc = Service(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await svc.close()

    app = FastAPI(title="multimodal_tags", version="1", lifespan=lifespan,
                  description="Tags for products from their text and photos, learning from feedback.")
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes, read_timeout_s=cfg.body_timeout_s)
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """422 naming each bad field. The input is not echoed (it may be huge), and the body is ASCII-escaped
        JSON: a lone surrogate in a field must not turn a 422 into a 500."""
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
                  for e in exc.errors()]
        return Response(json.dumps({"detail": detail}, default=str), status_code=422, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """The usual {"detail": ...}, ASCII-escaped (a message quoting bad input stays a valid response), with
        the server's own folders replaced by their role: no reply names a server path."""
        body = _without_server_paths(json.dumps({"detail": exc.detail}, default=str), cfg)
        return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        """A client that goes away mid-body (an aborted upload) is one log line, not a traceback."""
        LOG.warning("%s %s: the client disconnected before sending the whole body", request.method,
                    request.url.path)
        return Response(status_code=400)  # nobody is there to read it

    _write_routes(app, svc)
    _read_routes(app, svc)
    return app


def _guard(cfg: ServiceConfig, *scopes: str) -> list:
    """The dependency of a route that needs a key with one of `scopes` (when the service has keys); the
    client is left in request.state.client."""
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    def check(request: Request, key: str | None = Depends(key_header)) -> None:
        request.state.client = None
        if cfg.keys is None:
            _rate_limit(cfg, request.client.host if request.client else "anonymous")
            return
        client = cfg.keys.client(key)
        if client is None:
            raise HTTPException(401, "this endpoint needs an API key in the X-API-Key header")
        if not client.scopes & set(scopes):
            raise HTTPException(403, f"the key of {client.name!r} lacks the scope this endpoint needs "
                                     f"({' or '.join(scopes)})")
        request.state.client = client
        _rate_limit(cfg, client.name)
    return [Depends(check)]


def _rate_limit(cfg: ServiceConfig, who: str) -> None:
    """429 with Retry-After when `who` (a client's name, or an address without keys) is over its rate."""
    if cfg.limiter is not None and (wait := cfg.limiter.wait_s(who)) > 0:
        raise HTTPException(429, f"over {cfg.limiter.rate:g} requests a second for {who!r}; retry later",
                            headers={"Retry-After": str(max(1, round(wait)))})


def _without_server_paths(text: str, cfg: ServiceConfig) -> str:
    """`text` with every folder of the server (image root, uploads, store, model, cache) named by its role."""
    roles = {"<image root>": cfg.image_root, "<uploads>": cfg.uploads, "<store folder>": cfg.store_path.parent,
             "<model>": cfg.model_dir, "<cache>": cfg.cache_dir}
    paths = [(str(form), role) for role, p in roles.items() if p is not None
             for form in {Path(p), Path(p).resolve(), Path(p).absolute()} if len(str(form)) > 1]
    for path, role in sorted(paths, key=lambda x: -len(x[0])):  # the longest first: nested folders
        text = text.replace(json.dumps(path)[1:-1], role)
    return text


def _write_routes(app: FastAPI, svc: Service) -> None:
    @app.post("/tag", openapi_extra={"requestBody": TAG_BODY}, dependencies=_guard(svc.cfg, "write"))
    async def tag(request: Request) -> dict:
        """Tag one product; its tags are stored (and feedback on them accepted) before the reply."""
        product, root = await _read_product(request, svc.cfg)
        row = await svc.batcher.tag(product, root)
        await svc.store.run(svc.store.write_rows, [row], [product])
        return row

    @app.post("/feedback", dependencies=_guard(svc.cfg, "write", "review"))
    async def feedback(events: FeedbackEvent | list[FeedbackEvent]) -> dict:
        """Store judgements (one event or a list), committed before the reply; a redelivered event_id
        is stored once. Every `refit_every` events the calibration is re-fitted in the background."""
        events = events if isinstance(events, list) else [events]
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_EVENTS_PER_REQUEST} events per request")
        result = await svc.store.run(svc.store.add, events)
        if svc.store.take_refit_due(svc.cfg.refit_every, svc.cfg.refit_interval_s):
            svc.background.add(task := asyncio.get_running_loop().create_task(svc.model.refit()))
            task.add_done_callback(svc.background.discard)
        refused = [{"index": i, "event_id": events[i].event_id, "reason": r} for i, r in result.refused]
        if refused and not (result.stored or result.duplicates):
            raise HTTPException(422, {"message": "no event was stored", "refused": refused})
        return {"stored": result.stored, "duplicates": result.duplicates, "refused": refused}


    @app.post("/interactions", dependencies=_guard(svc.cfg, "write"))
    async def interactions(events: Interaction | list[Interaction]) -> dict:
        """Purchases and clicks (one or a list), counted in the users' profiles over the products' tags."""
        events = events if isinstance(events, list) else [events]
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_EVENTS_PER_REQUEST} interactions per request")
        result = await svc.store.run(svc.store.add_interactions, events)
        refused = [{"index": i, "event_id": events[i].event_id, "reason": r} for i, r in result.refused]
        if refused and not (result.stored or result.duplicates):
            raise HTTPException(422, {"message": "no interaction was counted", "refused": refused})
        return {"counted": result.stored, "duplicates": result.duplicates, "refused": refused}


def _read_routes(app: FastAPI, svc: Service) -> None:
    read = _guard(svc.cfg, "read")

    @app.get("/products/{product_id}/tags", dependencies=read)
    async def product_tags(product_id: str, user: str | None = Query(None, max_length=256)) -> dict:
        """The product's current tags, with scores, sources and the model that gave them; `judged`: what
        feedback said of its tags (the served tags already follow it); with `user`, `ranked`: its tags
        in the order of that user's profile (the global order for an unknown user)."""
        row = await svc.store.run(svc.store.current_tags, product_id, user)
        if row is None:
            raise HTTPException(404, f"unknown product {product_id!r}")
        return row

    @app.get("/users/{user}/recommendations", dependencies=read)
    async def recommendations(user: str, k: int = Query(10, ge=1, le=1000)) -> dict:
        """The products whose tags best match the user's profile."""
        return {"user": user, "products": await svc.reads.run(svc.reads.recommendations, user, k)}

    @app.get("/stats", dependencies=read)
    async def stats() -> dict:
        """Users' acceptance of proposed tags (overall, per tag key, over time), batching, the model."""
        return await svc.store.run(svc.stats)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model_id": svc.model.learner.model_id,
                "uptime_s": round(time.time() - svc.started, 1)}


async def _read_product(request: Request, cfg: ServiceConfig) -> tuple[Product, Path]:
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
