"""From a catalog and the feature cache to tensors the tagger trains on."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig
from ..data.schema import Product
from ..models.lexical import product_lexical_matrix
from ..models.tagger import build_tokenizer, decoder_targets, price_target


@dataclass
class LabelSpace:
    """Categories, tag vocabulary and decoder tokenizer, all fixed from the training products."""

    categories: list[str]
    tags: list[str]
    tokenizer: object
    adversary_classes: list[str]


def build_label_space(train: Sequence[Product], vocab: Sequence[str] | None, cfg: ModelConfig) -> LabelSpace:
    categories = sorted({p.category for p in train if p.category})
    tags = list(vocab) if vocab is not None else sorted({t for p in train for t in p.tags})
    adversary = sorted({str(p.extra.get(cfg.adversary_field)) for p in train
                        if cfg.adversary_field and p.extra.get(cfg.adversary_field) is not None})
    return LabelSpace(categories, tags, build_tokenizer(cfg, tags, [p.tags for p in train]), adversary)


class FeatureDataset(Dataset):
    """Cached encoder vectors and labels of a list of products, as tensors."""

    def __init__(self, products: Sequence[Product], feats: dict[str, np.ndarray], labels: LabelSpace,
                 cfg: ModelConfig, views: dict[str, np.ndarray] | None = None):
        n = len(products)
        # augmented views [n, V, dim] per modality: __getitem__ draws the clean vector or one of them
        self.views = {k: torch.from_numpy(v) for k, v in (views or {}).items()}
        self.products = list(products)
        self.text = torch.from_numpy(feats.get("text", np.zeros((n, cfg.text_dim), np.float32)))
        self.image = torch.from_numpy(feats.get("image", np.zeros((n, cfg.image_dim), np.float32)))
        self.has_text = torch.from_numpy(feats.get("has_text", np.zeros(n, bool)))
        self.has_image = torch.from_numpy(feats.get("has_image", np.zeros(n, bool)))
        cat_index = {c: i for i, c in enumerate(labels.categories)}
        self.category = torch.tensor([cat_index.get(p.category, -1) for p in products], dtype=torch.long)
        tag_index = {t: i for i, t in enumerate(labels.tags)}
        self.tags = torch.zeros(n, len(labels.tags))
        for i, p in enumerate(products):
            for t in p.tags:
                if t in tag_index:
                    self.tags[i, tag_index[t]] = 1.0
        self.decoder_ids = (torch.from_numpy(decoder_targets(labels.tokenizer, [p.tags for p in products]))
                            if labels.tokenizer is not None else None)
        adv_index = {c: i for i, c in enumerate(labels.adversary_classes)}
        self.adversary = (torch.tensor([adv_index.get(str(p.extra.get(cfg.adversary_field)), -1) for p in products])
                          if labels.adversary_classes else None)
        self.price = (torch.tensor([price_target(p.extra.get(cfg.price_field)) for p in products], dtype=torch.float32)
                      if cfg.price_field else None)
        self.lexical_ids = (torch.from_numpy(product_lexical_matrix(products, cfg.lexical_buckets))
                            if cfg.lexical_buckets else None)
        self.word_scores = None  # the train split's cross-fitted word scores (train/word_scores.py sets them)

    def __len__(self) -> int:
        return len(self.products)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        text, image = self.text[i], self.image[i]
        if "text" in self.views:
            v = int(torch.randint(self.views["text"].shape[1] + 1, (1,)))
            text = self.views["text"][i, v] if v < self.views["text"].shape[1] else text
        if "image" in self.views:
            v = int(torch.randint(self.views["image"].shape[1] + 1, (1,)))
            image = self.views["image"][i, v] if v < self.views["image"].shape[1] else image
        item = {"index": torch.tensor(i), "text": text, "image": image, "has_text": self.has_text[i],
                "has_image": self.has_image[i], "category": self.category[i], "tags": self.tags[i]}
        for name in ("decoder_ids", "adversary", "price", "lexical_ids", "word_scores"):
            v = getattr(self, name)
            if v is not None:
                item[name] = v[i]
        return item


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def to_batch(d: dict[str, torch.Tensor]):
    from ..models.tagger import Batch

    return Batch(**{k: v for k, v in d.items() if k != "index"})
