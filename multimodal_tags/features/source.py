"""Products as ready tensors: encoder vectors from the feature cache (encoding only what it lacks),
presence masks, hashed word ids and, in training, cross-fitted word scores.

    source = FeatureSource.encode(products, encoders, cache, image_root, cfg)
    batch = source.batch()                       # all of it as one models.tagger.Batch
    loader = DataLoader(source, collate_fn=collate)  # or in batches; to_batch(item) -> Batch

Training, evaluation, tagging and the service all read features through it.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig
from ..data.feature_cache import FeatureCache
from ..data.schema import Product
from ..models.lexical import product_lexical_matrix
from ..models.tagger import Batch
from .encode import encode_and_load
from .encoders import EncoderSet
from .prefetch import Decoded

MODALITIES = ("both", "text", "image")
FEATURE_FIELDS = ("text", "image", "has_text", "has_image")


class FeatureSource(Dataset):
    """The features of a list of products (item i is product i), as a torch Dataset of dicts."""

    def __init__(self, products: Sequence[Product], vectors: dict[str, np.ndarray], cfg: ModelConfig):
        n = len(products)
        self.products, self.cfg = list(products), cfg
        self.text = torch.from_numpy(vectors.get("text", np.zeros((n, cfg.text_dim), np.float32)))
        self.image = torch.from_numpy(vectors.get("image", np.zeros((n, cfg.image_dim), np.float32)))
        self.has_text = torch.from_numpy(vectors.get("has_text", np.zeros(n, bool)))
        self.has_image = torch.from_numpy(vectors.get("has_image", np.zeros(n, bool)))
        self._lexical_ids: torch.Tensor | None = None
        self.word_scores: torch.Tensor | None = None  # cross-fitted, training only (train/fit_word_scores.py)

    @classmethod
    def encode(cls, products: Sequence[Product], encoders: EncoderSet, cache: FeatureCache, image_root: Path,
               cfg: ModelConfig, num_workers: int | None = None, log: Callable[[str], None] | None = None,
               decoded: Decoded | None = None) -> "FeatureSource":
        """Encode what the cache lacks for these products (`decoded`: photos already preprocessed, by
        hash), then hold their vectors."""
        vectors = encode_and_load(products, cache, image_root, encoders.text, encoders.image, num_workers, log,
                                  decoded)
        return cls(products, vectors, cfg)

    @property
    def lexical_ids(self) -> torch.Tensor | None:
        """[n, width] hashed word ids of the texts (models with a lexical branch), computed on first use."""
        if self._lexical_ids is None and self.cfg.lexical_buckets:
            self._lexical_ids = torch.from_numpy(product_lexical_matrix(self.products, self.cfg.lexical_buckets))
        return self._lexical_ids

    def __len__(self) -> int:
        return len(self.products)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"index": torch.tensor(i), "text": self.text[i], "image": self.image[i],
                "has_text": self.has_text[i], "has_image": self.has_image[i]}
        for name in ("lexical_ids", "word_scores"):
            value = getattr(self, name)
            if value is not None:
                item[name] = value[i]
        return item

    def subset(self, indices: Sequence[int]) -> "FeatureSource":
        """The features of products `indices`, in that order (word scores are not carried over)."""
        ids = list(indices)
        out = FeatureSource.__new__(FeatureSource)
        out.products, out.cfg = [self.products[i] for i in ids], self.cfg
        for name in FEATURE_FIELDS:
            setattr(out, name, getattr(self, name)[ids])
        out._lexical_ids = None if self._lexical_ids is None else self._lexical_ids[ids]
        out.word_scores = None
        return out

    def concat(self, other: "FeatureSource") -> "FeatureSource":
        """The products of this source, then those of `other`, with their features (word scores are not
        carried over)."""
        out = FeatureSource.__new__(FeatureSource)
        out.products, out.cfg = self.products + other.products, self.cfg
        for name in FEATURE_FIELDS:
            setattr(out, name, torch.cat([getattr(self, name), getattr(other, name)]))
        out._lexical_ids, out.word_scores = None, None
        return out

    def hide(self, modalities: str) -> "FeatureSource":
        """The source showing only `modalities` ("both": itself; "text" or "image": a copy with the other
        modality marked absent everywhere, for text-only / image-only ablations)."""
        if modalities not in MODALITIES:
            raise ValueError(f"modalities {modalities!r} is not one of {', '.join(MODALITIES)}")
        if modalities == "both":
            return self
        out = copy.copy(self)  # shares the vectors: only a mask changes
        if modalities == "text":
            out.has_image = torch.zeros_like(self.has_image)
        if modalities == "image":
            out.has_text = torch.zeros_like(self.has_text)
        return out

    def batch(self) -> Batch:
        """All of the source as one Batch."""
        return Batch(text=self.text, image=self.image, has_text=self.has_text, has_image=self.has_image,
                     lexical_ids=self.lexical_ids, word_scores=self.word_scores)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of items (FeatureSource's, or a labelled dataset's) into one dict of tensors."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def to_batch(d: dict[str, torch.Tensor]) -> Batch:
    """A collated dict as a Batch (the index, which says where each row came from, left out)."""
    return Batch(**{k: v for k, v in d.items() if k != "index"})
