"""Encode a catalog's texts and photos with frozen encoders into the feature cache.

Only what the cache lacks is encoded: vectors are keyed by the encoder's cache key (spec, weights,
preprocessing) and each item's hash (text hash, image-bytes hash). Batches are committed one by
one, so an interrupted run loses at most the batch in flight.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.augment import augment_image, augment_text, view_seed
from ..data.feature_cache import FeatureCache
from ..data.images import ImageError, load_image
from ..data.schema import Product
from ..models.image_encoders import ImageEncoder
from ..models.text_encoders import HFTextEncoder
from .pixels import PixelSteps
from .prefetch import Decoded, default_workers, draft_side


@dataclass
class EncodeStats:
    """What one modality's pass did."""

    modality: str
    encoder: str
    products: int = 0  # products with this modality
    unique: int = 0  # distinct items (identical texts/photos share a vector)
    cached: int = 0  # found in the cache, not encoded again
    encoded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (product id, reason)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        s = (f"{self.modality:5s} {self.encoder}: {self.products} products, {self.unique} unique, "
             f"{self.cached} cached, {self.encoded} encoded")
        if self.encoded:
            s += f" in {self.seconds:.1f}s ({self.per_second:.1f}/s)"
        if self.failed:
            s += f", {len(self.failed)} failed"
        return s


def _to_encode(cache: FeatureCache, key: str, items: dict[str, str], stats: EncodeStats) -> list[str]:
    """The item hashes the cache lacks under `key`; counts unique and cached items in `stats`."""
    stats.unique = len(items)
    todo = cache.missing(key, items)
    stats.cached = stats.unique - len(todo)
    return todo


def register(cache: FeatureCache, encoder: ImageEncoder | HFTextEncoder) -> str:
    key = encoder.cache_key()
    if not cache.registered(key):  # describing an encoder walks its modules: once per connection, not per batch
        cache.register(key, encoder.spec, encoder.dim, encoder.describe())
    return key


@torch.no_grad()
def encode_texts(products: Sequence[Product], encoder: HFTextEncoder, cache: FeatureCache,
                 batch_size: int = 64, progress: bool = True) -> EncodeStats:
    """Encode every product text the cache lacks, in length-sorted batches (less padding)."""
    texts = {p.text_hash: p.text for p in products if p.text}
    stats = EncodeStats("text", encoder.spec, products=sum(1 for p in products if p.text))
    return encode_text_items(texts, encoder, cache, register(cache, encoder), stats, batch_size, progress)


@torch.no_grad()
def encode_text_items(texts: dict[str, str], encoder: HFTextEncoder, cache: FeatureCache, key: str,
                      stats: EncodeStats, batch_size: int = 64, progress: bool = True) -> EncodeStats:
    """Encode {item hash: text} under cache key `key`, skipping what is cached."""
    todo = _to_encode(cache, key, texts, stats)
    if not todo:
        return stats
    start = time.perf_counter()
    encoder.expect(len(todo))
    lengths = encoder.token_lengths([texts[h] for h in todo])
    order = [todo[i] for i in np.argsort(lengths, kind="stable")]
    encoder.eval()
    with tqdm(total=len(order), desc=f"text  {encoder.spec}", unit="text", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            hashes = order[s:s + batch_size]
            vectors = encoder.encode([texts[h] for h in hashes]).pooled.cpu().numpy()
            cache.put(key, hashes, vectors)
            stats.encoded += len(hashes)
            bar.update(len(hashes))
    stats.seconds = time.perf_counter() - start
    return stats


class ImageFiles(Dataset):
    """(image hash, pixels or None, error) for each image to encode; decoding runs in workers. With `steps`
    (a PixelSteps of the transform), pixels are what its `photo` gives, for its `stack` to batch."""

    def __init__(self, items: list[tuple[str, str]], root: Path, transform, augment_view: int | None = None,
                 steps: PixelSteps | None = None):
        self.items, self.root, self.transform = items, root, transform
        self.augment_view, self.per_photo = augment_view, steps.photo if steps is not None else transform
        # an augmented view may crop and enlarge a small part: decode those at full size
        self.side = draft_side(transform) if augment_view is None else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image_hash, ref = self.items[i]
        try:
            image = load_image(ref, self.root, self.side)
            if self.augment_view is not None:
                image = augment_image(image, view_seed(image_hash, self.augment_view))
            return image_hash, self.per_photo(image), None
        except ImageError as e:
            return image_hash, None, str(e)


def collate_images(batch):
    return batch  # pixels are stacked after dropping failures


@torch.no_grad()
def encode_images(products: Sequence[Product], encoder: ImageEncoder, cache: FeatureCache, image_root: Path,
                  batch_size: int = 64, num_workers: int | None = None, progress: bool = True,
                  augment_view: int | None = None, decoded: Decoded | None = None) -> EncodeStats:
    """Encode every product photo the cache lacks. A photo that fails to load is reported, not fatal.
    With `augment_view`, encode that augmented view of each photo instead (its own cache key). `decoded`:
    photos already preprocessed by hash (features/prefetch.py); the rest are read here, by `num_workers`
    decoding processes (None: prefetch.default_workers, none on 2 cores)."""
    stats = EncodeStats("image", encoder.spec)
    key = register(cache, encoder)
    if augment_view is not None:
        key = register_view(cache, key, encoder, "image", augment_view)
    with_image = [p for p in products if p.image and p.image_hash]
    stats.products = len(with_image)
    refs: dict[str, str] = {}
    owners: dict[str, str] = {}
    for p in with_image:
        refs.setdefault(p.image_hash, p.image)
        owners.setdefault(p.image_hash, p.id)
    todo = _to_encode(cache, key, refs, stats)
    if not todo:
        return stats
    if augment_view is None and hasattr(encoder, "trunk_encoder"):
        return _encode_through_trunk(products, encoder, cache, key, todo, image_root, stats,
                                     batch_size=batch_size, num_workers=num_workers, progress=progress)
    start = time.perf_counter()
    encoder.expect(len(todo))
    num_workers = default_workers(encoder.device.type) if num_workers is None else num_workers
    ready = [(h, *decoded[h]) for h in todo if h in decoded] if decoded else []
    to_read = [h for h in todo if not decoded or h not in decoded]
    steps = PixelSteps(encoder.transform)  # to-tensor and normalise once per batch
    loader = DataLoader(ImageFiles([(h, refs[h]) for h in to_read], Path(image_root), encoder.transform, augment_view,
                                   steps),
                        batch_size=batch_size, num_workers=num_workers if to_read else 0, collate_fn=collate_images)
    encoder.eval()
    with tqdm(total=len(todo), desc=f"image {encoder.spec}", unit="img", disable=not progress) as bar:
        for batch in itertools.chain((ready[s:s + batch_size] for s in range(0, len(ready), batch_size)), loader):
            ok = [(h, x) for h, x, err in batch if err is None]
            stats.failed += [(owners[h], err) for h, x, err in batch if err is not None]
            if ok:
                pixels = steps.stack([x for _, x in ok]).to(encoder.device)
                vectors = encoder.embed(pixels).pooled.cpu().numpy()
                cache.put(key, [h for h, _ in ok], vectors)
                stats.encoded += len(ok)
            bar.update(len(batch))
    stats.seconds = time.perf_counter() - start
    return stats


def _encode_through_trunk(products: Sequence[Product], encoder, cache: FeatureCache, key: str, todo: list[str],
                          image_root: Path, stats: EncodeStats, **kwargs) -> EncodeStats:
    """An encoder that is a projection over another encoder's vector (a CLIP tower over a locked trunk):
    encode the trunk's vectors (cached under the trunk's own key, shared with that encoder), then project."""
    start = time.perf_counter()
    trunk = encoder.trunk_encoder()
    wanted = set(todo)
    trunk_stats = encode_images([p for p in products if p.image_hash in wanted], trunk, cache, image_root, **kwargs)
    stats.failed += trunk_stats.failed
    vectors, ok = cache.get(trunk.cache_key(), todo)
    done, vectors = [h for h, good in zip(todo, ok) if good], vectors[ok]
    for s in range(0, len(done), 4096):
        projected = encoder.project(torch.from_numpy(vectors[s:s + 4096])).cpu().numpy()
        cache.put(key, done[s:s + 4096], projected)
    stats.encoded = len(done)
    stats.seconds = time.perf_counter() - start
    return stats


def encode_and_load(products: Sequence[Product], cache: FeatureCache, image_root: Path,
                    text_encoder: HFTextEncoder | None = None, image_encoder: ImageEncoder | None = None,
                    num_workers: int | None = None, log=None, decoded: Decoded | None = None) -> dict[str, np.ndarray]:
    """Encode what the cache lacks for these encoders, then return the products' vectors (see
    `load_features`); `log` gets each modality's summary line; `decoded`: photos already preprocessed."""
    keys: dict[str, str] = {}
    if text_encoder is not None:
        stats = encode_texts(products, text_encoder, cache, progress=False)
        keys["text"] = text_encoder.cache_key()
        if log:
            log("  " + stats.summary())
    if image_encoder is not None:
        stats = encode_images(products, image_encoder, cache, image_root, num_workers=num_workers, progress=False,
                              decoded=decoded)
        keys["image"] = image_encoder.cache_key()
        if log:
            log("  " + stats.summary())
    return load_features(products, cache, keys.get("text"), keys.get("image"))


def load_features(products: Sequence[Product], cache: FeatureCache, text_key: str | None,
                  image_key: str | None) -> dict[str, np.ndarray]:
    """Cached vectors aligned with `products`: text/image arrays and has_text/has_image masks
    (a product with no photo, or whose photo failed, has has_image False and a zero vector)."""
    out: dict[str, np.ndarray] = {}
    if text_key:
        out["text"], out["has_text"] = cache.get(text_key, [p.text_hash if p.text else None for p in products])
    if image_key:
        out["image"], out["has_image"] = cache.get(image_key, [p.image_hash if p.image else None for p in products])
    return out


def register_view(cache: FeatureCache, key: str, encoder, modality: str, view: int) -> str:
    """Cache key of augmented view `view` of an encoder's inputs."""
    view_key = f"{key}:{modality}-aug{view}"
    cache.register(view_key, encoder.spec, encoder.dim, {**encoder.describe(), "augmented_view": view})
    return view_key


def encode_text_views(products: Sequence[Product], encoder: HFTextEncoder, cache: FeatureCache, view: int,
                      progress: bool = False) -> EncodeStats:
    """Encode augmented view `view` (word dropout and swaps, seeded by text and view) of each text."""
    key = register_view(cache, register(cache, encoder), encoder, "text", view)
    texts = {p.text_hash: augment_text(p.text, view_seed(p.text_hash, view)) for p in products if p.text}
    stats = EncodeStats(f"text view {view}", encoder.spec, products=len(texts))
    return encode_text_items(texts, encoder, cache, key, stats, progress=progress)


def load_views(products: Sequence[Product], cache: FeatureCache, key: str, modality: str,
               views: int) -> np.ndarray:
    """[n, views, dim] augmented vectors; where a view is missing the clean vector stands in."""
    items = [(p.text_hash if p.text else None) if modality == "text" else (p.image_hash if p.image else None)
             for p in products]
    clean, _ = cache.get(key, items)
    out = np.repeat(clean[:, None, :], views, axis=1)
    for v in range(views):
        vec, found = cache.get(f"{key}:{modality}-aug{v}", items)
        out[found, v] = vec[found]
    return out
