"""Thresholds tuned on validation products: per tag for the tag head, one for generated tags."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.schema import Product
from ..features.source import FeatureSource
from ..models.heads import tune_thresholds
from ..models.tagger import Tagger
from .predict import tag_probabilities

# generated-tag probability thresholds tried: 0, 0.05, ..., 0.9
DECODER_THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(19))


def tag_matrix(products: Sequence[Product], tags: Sequence[str]) -> np.ndarray:
    """[n, n_tags] multi-hot float32 labels over the vocabulary `tags` (tags outside it are ignored)."""
    index = {t: i for i, t in enumerate(tags)}
    out = np.zeros((len(products), len(tags)), np.float32)
    for i, p in enumerate(products):
        for t in p.tags:
            if t in index:
                out[i, index[t]] = 1.0
    return out


def tune_head_thresholds(model: Tagger, val: FeatureSource) -> np.ndarray:
    """Set the tag head's per-tag thresholds to maximise F1 on the validation products; returns them."""
    probs = tag_probabilities(model, val).numpy()
    th = tune_thresholds(probs, tag_matrix(val.products, model.tags))
    model.thresholds.copy_(torch.from_numpy(th))
    return th


def tune_decoder_threshold(model: Tagger, val_preds: list[dict], products: Sequence[Product],
                           grid: Sequence[float] = DECODER_THRESHOLD_GRID) -> float:
    """Set the probability below which generated tags are dropped, to maximise micro-F1 on validation
    predictions made with threshold 0, and drop them from `val_preds` too; returns the threshold.

    Micro-F1 counts a wrong value as two errors (a false positive and a missed tag) and no value as
    one: when the decoder is unsure of a colour, leaving it out scores better than a guess."""
    gold = [set(p.tags) for p in products]
    gen = [q.get("generated_tags", {}) for q in val_preds]
    n_gold = sum(map(len, gold))

    def f1(th: float) -> float:
        tp = npred = 0
        for g, tags in zip(gold, gen):
            kept = {t for t, s in tags.items() if s >= th}
            tp, npred = tp + len(kept & g), npred + len(kept)
        return 2 * tp / max(npred + n_gold, 1)

    best = max(grid, key=lambda th: (f1(th), -th))
    model.decoder_threshold.fill_(float(best))
    for q in val_preds:
        if "generated_tags" in q:
            q["generated_tags"] = {t: s for t, s in q["generated_tags"].items() if s >= best}
    return float(best)
