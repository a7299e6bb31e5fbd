"""A shop's own priors for the keys every product must answer, learned from its reviews.

Where a product's words and photo say nothing of a key that must be answered (its colour, say), the row
gets the key's most probable value (models/tagger.py `required_answers`), and with no evidence that is
the prior the model learned on its training shop. A new shop has its own: on H&M, black is a third of
the products and blue one in fourteen, while a Myntra model guesses blue for a third. So `adapt` moves
each value's logit by a prior correction for a logistic model whose sample rate differs from the
population's (King and Zeng 2001): logit(q) - logit(p), with p the model's mean probability of the value
over the reviewed products and q the share of them that have it, shrunk towards p by PSEUDO_COUNT
products (a few reviews move little).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.schema import Product
from ..features.source import FeatureSource, collate, to_batch
from ..models.tag_tokenizer import tag_key
from ..models.tagger import Tagger

PSEUDO_COUNT = 20.0  # reviewed products' worth of weight the model's own mean keeps
EPS = 1e-4


@torch.no_grad()
def fill_probabilities(model: Tagger, source: FeatureSource, batch_size: int = 256) -> np.ndarray:
    """[n, n_tags] the probabilities each product's required keys are filled from (photo or tag head)."""
    out = []
    for raw in DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=collate):
        pred = model.predict_raw(to_batch(raw), generate=False)
        out += [model.fill_probabilities(pred, n).float().numpy() for n in range(pred.tag_probs.shape[0])]
    return np.stack(out) if out else np.zeros((0, len(model.tags)), np.float32)


def required_key_names(model: Tagger) -> list[str]:
    """Every key some category must answer."""
    return list(dict.fromkeys(k for keys in model.required.values() for k in keys))


def prior_shift(model: Tagger, probs: np.ndarray, products: Sequence[Product],
                pseudo_count: float = PSEUDO_COUNT) -> dict[str, float]:
    """{tag: logit shift} for every value of every required key, from the products (their labels, as
    feedback says) that have exactly one value of that key in the vocabulary; keys none has are left out."""
    index = {t: j for j, t in enumerate(model.tags)}
    shift: dict[str, float] = {}
    for key in required_key_names(model):
        values = [t for t in model.tags if tag_key(t) == key]
        rows, counts = [], np.zeros(len(values))
        for i, p in enumerate(products):
            known = [values.index(t) for t in p.tags if t in index and tag_key(t) == key]
            if len(known) == 1:
                rows.append(i)
                counts[known[0]] += 1
        if not rows:
            continue
        mean = probs[np.ix_(rows, [index[t] for t in values])].mean(axis=0).clip(EPS, 1 - EPS)
        share = ((counts + pseudo_count * mean) / (len(rows) + pseudo_count)).clip(EPS, 1 - EPS)
        shift |= {t: float(_logit(q) - _logit(m)) for t, q, m in zip(values, share, mean)}
    return shift


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def learn_prior_shift(model: Tagger, source: FeatureSource) -> dict[str, float]:
    """Set `model`'s fill_shift from the reviewed products of `source` (features and labels); returns it."""
    if not model.required:
        return {}
    shift = prior_shift(model, fill_probabilities(model, source), source.products)
    model.set_fill_shift(shift)
    return model.fill_shift

