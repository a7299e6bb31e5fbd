"""Photos decoded ahead of the encoders: worker processes read, decode and resize the photos of the next
batches while the current batch is encoded, through a bounded queue (at most `ahead` batches in flight,
so memory stays flat on a catalog of any size).

The image transform is split where it turns a PIL image into a tensor: the PIL steps (resize, crop) run
in the workers, which touch no torch code (a forked child of a process with torch threads must not);
the tensor steps (to tensor, normalise) run in the caller on each photo.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from torchvision.transforms import Compose

from ..data.images import ImageError, load_image

#: hash -> (pixels, None) or (None, why the photo could not be used)
Decoded = dict[str, tuple[object, str | None]]
T = TypeVar("T")


def split_transform(transform) -> tuple[Compose, Compose]:
    """(PIL steps, tensor steps) of a torchvision Compose: split before its first to-tensor step."""
    steps = list(getattr(transform, "transforms", [transform]))
    cut = next((i for i, s in enumerate(steps) if "ToTensor" in type(s).__name__), len(steps))
    return Compose(steps[:cut]), Compose(steps[cut:])


def draft_side(transform) -> int | None:
    """The shortest side a photo needs before `transform`: its first step's size when that step is a
    Resize, else None (decode at full size). A JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale that
    keeps both sides at least this long (PIL's draft mode), then resized and cropped as before: a 3,000 px
    photo for a 128 px model costs a fraction of its full decode, and the pixels the model sees barely move."""
    steps = list(getattr(transform, "transforms", [transform]))
    if not steps or type(steps[0]).__name__ != "Resize":
        return None
    size = steps[0].size
    return int(max(size) if isinstance(size, (tuple, list)) else size)


def decode_photos(items: list[tuple[str, str]], root: str, pil_steps: Compose) -> list[tuple[str, object, str | None]]:
    """(hash, uint8 HxWx3 array or None, error or None) for each (hash, photo reference); runs in a worker."""
    out, side = [], draft_side(pil_steps)
    for image_hash, ref in items:
        try:
            out.append((image_hash, np.asarray(pil_steps(load_image(ref, Path(root), side))), None))
        except ImageError as e:
            out.append((image_hash, None, str(e)))
    return out


def default_workers(device: str = "cpu") -> int:
    """Decoding processes worth starting: none on a CPU of 2 cores or fewer (a worker there takes a core
    from the encoders: measured 6-20% slower on 2 cores, docs/performance.md), else one, or up to 8 feeding a
    GPU (not measured)."""
    cores = os.cpu_count() or 1
    if device != "cpu":
        return max(1, min(8, cores - 1))
    return 0 if cores <= 2 else 1


class PhotoPrefetch:
    """A pool of decoding processes for one image transform and image root (a context manager)."""

    def __init__(self, transform, image_root: Path, workers: int = 1):
        self.pil_steps, self.tensor_steps = split_transform(transform)
        self.root, self.workers = str(image_root), max(1, workers)
        # fork: workers start in milliseconds and run PIL code only (see the module docstring)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))

    def submit(self, items: list[tuple[str, str]]) -> list[Future]:
        """Start decoding (hash, reference) items, split between the workers."""
        chunks = [items[w::self.workers] for w in range(self.workers)]
        return [self.pool.submit(decode_photos, chunk, self.root, self.pil_steps) for chunk in chunks if chunk]

    def result(self, futures: list[Future]) -> Decoded:
        """The submitted photos as preprocessed tensors (or their errors), by hash."""
        decoded: Decoded = {}
        for future in futures:
            for image_hash, array, error in future.result():
                decoded[image_hash] = (None, error) if array is None else (self.tensor_steps(array), None)
        return decoded

    def __enter__(self) -> "PhotoPrefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(cancel_futures=True)


def pipelined(batches: Iterable[T], start: Callable[[T], object], finish: Callable[[T, object], object],
              ahead: int = 2) -> Iterator[object]:
    """finish(batch, start(batch)) for each batch in order, with `start` called up to `ahead` batches
    before the batch is finished (the bounded queue)."""
    pending: deque = deque()
    for batch in batches:
        pending.append((batch, start(batch)))
        if len(pending) > ahead:
            yield finish(*pending.popleft())
    while pending:
        yield finish(*pending.popleft())
