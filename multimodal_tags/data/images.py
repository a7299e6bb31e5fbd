"""Resolve a product's image reference safely and check that it decodes.

Image references are paths relative to the catalog's image root. Anything that would read outside
that root (`..`, an absolute path elsewhere, a symlink pointing out) is refused, and remote URLs
are not fetched: a catalog must bring its photos with it.
"""
from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .schema import hash_bytes

#: Refuse to decode absurd images (decompression bombs); PIL's own default warns only.
MAX_IMAGE_PIXELS = 64_000_000
#: Refuse photo files larger than this before reading them (a product photo is far smaller).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: Checking that a photo decodes needs no full-size pixels: a JPEG is decoded at 1/2 .. 1/8 scale (PIL's
#: draft mode) to at least this side, which still reads every coefficient (a truncated or corrupt file
#: fails the same) and holds a 64-Mpx photo in about 3 MB instead of 200.
CHECK_SIDE = 256
#: Pixels this process decodes at once, all threads together (about 3 bytes each, twice over while a
#: palette or RGBA photo is converted): a decode waits until its pixels fit, so eight 64-Mpx PNGs sent at
#: once are decoded two at a time instead of holding 2 GB. JPEGs are decoded at reduced size first.
DECODE_BUDGET_PIXELS = 128_000_000


class PixelBudget:
    """A bound on the pixels being decoded at once by this process's threads."""

    def __init__(self, limit: int):
        self.limit, self.in_use = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Wait until `pixels` fit beside the decodes under way, and hold them for the block."""
        pixels = min(pixels, self.limit)  # one image alone always fits (MAX_IMAGE_PIXELS caps it anyway)
        with self._cond:
            self._cond.wait_for(lambda: self.in_use + pixels <= self.limit)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)


class ImageError(ValueError):
    """An image reference that cannot be used; the message says why and what to do."""


def resolve_image(ref: str, root: Path) -> Path:
    """Return the file `ref` names inside `root`, or raise ImageError saying why it cannot be used."""
    ref = ref.strip()
    if "://" in ref:
        scheme = ref.split("://", 1)[0].lower()
        raise ImageError(
            f"remote image reference ({scheme}://...) is not fetched; download the photo into the "
            f"catalog folder and give its relative path"
        )
    if "\x00" in ref:  # no file name holds one, and the OS refuses to look it up
        raise ImageError(f"image path {ref!r} holds a NUL character")
    root = root.resolve()
    path = (root / ref).resolve()  # resolve() follows symlinks, so a link pointing out is caught too
    if path != root and root not in path.parents:
        raise ImageError(f"image path {ref!r} points outside the catalog's image root {root}")
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ImageError(f"image file {path} is {size:,} bytes, over {MAX_IMAGE_BYTES:,}")
    return path


def decode_image(data: bytes, name: str = "image", min_side: int | None = None) -> Image.Image:
    """Decode bytes to an RGB image, raising ImageError for corrupt, truncated or huge files. With
    `min_side`, a JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale that keeps both sides at least
    that large (draft mode: most of the decoding work and memory saved); other formats at full size."""
    try:
        with warnings.catch_warnings():  # PIL warns on huge images: our own, lower, limit decides below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{name} is {im.width}x{im.height}, over {MAX_IMAGE_PIXELS:,} pixels")
            if min_side and im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))  # keeps every side >= min_side; im.size is the new size
            with DECODE_BUDGET.reserve(im.width * im.height):
                im.load()  # a full decode: verify() alone misses truncated JPEGs
                return im.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError:  # PIL's limit is above ours: this image is over ours too
        raise ImageError(f"{name} is over {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} cannot be decoded ({type(e).__name__}: {e})") from None


def load_image(ref: str, root: Path, min_side: int | None = None) -> Image.Image:
    """Resolve and decode an image reference (see `resolve_image`); `min_side` as `decode_image`."""
    path = resolve_image(ref, root)
    return decode_image(path.read_bytes(), str(path), min_side)


def check_image(ref: str, root: Path) -> str:
    """Resolve, read and fully decode an image; return the hash of its bytes."""
    path = resolve_image(ref, root)
    data = path.read_bytes()
    decode_image(data, str(path), min_side=CHECK_SIDE)
    return hash_bytes(data)
