"""Label-word masking in training: extra train rows whose text is silent about some of their labels.

A share of the train products (`TrainConfig.masked_copies`) gets one copy each, with the words of some
of its own labels removed from its text (data/masking.label_word_view): same photo, same labels. The
copies are encoded like any product (the photo is a cache hit), appended after the originals, and
their word scores come from the same cross-fitted SVMs applied to the *masked* text
(train/fit_word_scores.py), so the decoder learns what absent word evidence looks like and turns to the
photo, instead of trusting scores that the words it was trained on always supplied.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import MASKED_VIEWS, ModelConfig
from ..data.augment import view_seed
from ..data.feature_cache import FeatureCache
from ..data.masking import key_vocabularies, label_word_view
from ..features.encoders import EncoderSet
from ..features.source import FeatureSource

COPY_SUFFIX = "#masked"


def masked_copies(train: FeatureSource, share: float, seed: int, encoders: EncoderSet, cache_dir: str | Path,
                  image_root: Path, cfg: ModelConfig,
                  log: Callable[[str], None] = print, view: str = "own") -> tuple[FeatureSource, np.ndarray]:
    """(the train rows followed by masked copies of a seeded `share` of them, the original row of each
    copy). A share of 0 returns `train` and no copies. `view` (TrainConfig.masked_view): "own" removes the
    words of a product's own values of the chosen keys, "key" every word of every value of them."""
    if view not in MASKED_VIEWS:
        raise ValueError(f"masked_view is {view!r}: give one of {', '.join(MASKED_VIEWS)}")
    n = len(train)
    count = min(n, round(share * n))
    if count <= 0:
        return train, np.zeros(0, dtype=np.int64)
    picks = np.sort(np.random.default_rng(seed).choice(n, count, replace=False))
    vocabularies = key_vocabularies(train.products) if view == "key" else None
    copies = []
    for i in picks:
        p = train.products[int(i)]
        copy = label_word_view(p, view_seed(p.text_hash, seed), vocabularies=vocabularies)
        copy.id = p.id + COPY_SUFFIX
        copies.append(copy)
    with FeatureCache(cache_dir) as cache:
        copy_source = FeatureSource.encode(copies, encoders, cache, image_root, cfg, log=log)
    log(f"masked copies: {count} train products with some of their label words removed from the text "
        f"({'every value of a chosen key' if view == 'key' else 'their own values'})")
    return train.concat(copy_source), picks
