"""Labelled training data: a FeatureSource's features plus each product's labels, as tensors."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig
from ..data.schema import Product
from ..features.source import FeatureSource
from ..inference.thresholds import tag_matrix
from ..models.tag_tokenizer import ALL_CATEGORIES, exempt_keys, required_keys
from ..models.tagger import build_tokenizer, decoder_targets, price_target

LABEL_FIELDS = ("decoder_ids", "adversary", "price")


@dataclass
class LabelSpace:
    """Categories, tag vocabulary and decoder tokenizer, all fixed from the training products."""

    categories: list[str]
    tags: list[str]
    tokenizer: object
    adversary_classes: list[str]
    required: dict[str, list[str]]  # keys answered for every product (tag_tokenizer.required_keys)
    # the categories that do not answer some of required["*"] (tag_tokenizer.exempt_keys)
    required_exempt: dict[str, list[str]] = field(default_factory=dict)


def build_label_space(train: Sequence[Product], vocab: Sequence[str] | None, cfg: ModelConfig) -> LabelSpace:
    """The label space of the train products (`vocab`, when given, fixes the tags and their order)."""
    categories = sorted({p.category for p in train if p.category})
    tags = list(vocab) if vocab is not None else sorted({t for p in train for t in p.tags})
    adversary = sorted({str(p.extra.get(cfg.adversary_field)) for p in train
                        if cfg.adversary_field and p.extra.get(cfg.adversary_field) is not None})
    cats, tag_lists = [p.category for p in train], [p.tags for p in train]
    required = required_keys(cats, tag_lists)
    return LabelSpace(categories, tags, build_tokenizer(cfg, tags, tag_lists), adversary, required,
                      exempt_keys(cats, tag_lists, required[ALL_CATEGORIES]))


class FeatureDataset(Dataset):
    """The features of `source` and the labels of its products; with `views` ([n, V, dim] augmented
    vectors per modality of the original rows), each item draws the clean vector or one of its views.
    `copy_of`: the last len(copy_of) rows are masked copies (train/masked_copies.py) of these rows."""

    def __init__(self, source: FeatureSource, labels: LabelSpace, cfg: ModelConfig,
                 views: dict[str, np.ndarray] | None = None, copy_of: np.ndarray | None = None):
        self.features, products = source, source.products
        self.copy_of = np.zeros(0, dtype=np.int64) if copy_of is None else np.asarray(copy_of)
        if len(self.copy_of) and views:
            if "text" in views:
                raise ValueError("augmented text views and masked copies cannot be combined: set text_views=0 "
                                 "or masked_copies=0")
            views = {k: np.concatenate([v, v[self.copy_of]]) for k, v in views.items()}  # same photo
        self.views = {k: torch.from_numpy(v) for k, v in (views or {}).items()}
        cat_index = {c: i for i, c in enumerate(labels.categories)}
        self.category = torch.tensor([cat_index.get(p.category, -1) for p in products], dtype=torch.long)
        self.tags = torch.from_numpy(tag_matrix(products, labels.tags))
        self.decoder_ids = (torch.from_numpy(decoder_targets(labels.tokenizer, [p.tags for p in products]))
                            if labels.tokenizer is not None else None)
        adv_index = {c: i for i, c in enumerate(labels.adversary_classes)}
        self.adversary = (torch.tensor([adv_index.get(str(p.extra.get(cfg.adversary_field)), -1) for p in products])
                          if labels.adversary_classes else None)
        self.price = (torch.tensor([price_target(p.extra.get(cfg.price_field)) for p in products], dtype=torch.float32)
                      if cfg.price_field else None)

    @property
    def products(self) -> list[Product]:
        return self.features.products

    @property
    def n_original(self) -> int:
        """Rows before the masked copies."""
        return len(self.features) - len(self.copy_of)

    @property
    def lexical_ids(self) -> torch.Tensor | None:
        return self.features.lexical_ids

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.features[i]
        for modality in ("text", "image"):
            if modality in self.views:  # one draw per modality: a view, or (last) the clean vector
                views = self.views[modality]
                v = int(torch.randint(views.shape[1] + 1, (1,)))
                item[modality] = views[i, v] if v < views.shape[1] else item[modality]
        item["category"], item["tags"] = self.category[i], self.tags[i]
        for name in LABEL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                item[name] = value[i]
        return item
