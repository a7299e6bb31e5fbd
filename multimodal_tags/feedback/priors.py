"""A shop's own priors for the keys every product must answer, learned from its reviews.

Where a product's words and photo say nothing of a key that must be answered (its colour, say), the row
gets the key's most probable value (models/tagger.py `required_answers`). With no evidence that is the
prior of the shop the model was trained on, and the model may also read evidence that is not there. A
new shop has its own prior (on H&M, black is a third of the products and blue one in fourteen, where a
Myntra model reading H&M's texts guesses blue for a third), and its texts may carry less evidence than
the training shop's.

So, per key and per source of the fill's probabilities (the photo head, or the tag head where there is
no photo), `adapt` fits a prior-times-evidence model on the reviewed products:
    p(v | x) ∝ q(v) · (π(v | x) / π̄(v)) ** T
π is the model's probability of each value (its share of the key), π̄ its mean over the reviewed
products, q the share of them that have v (shrunk towards π̄ by PSEUDO_COUNT products), and T in [0, 1]
the weight of the evidence, chosen by cross-validation on the reviewed products: by how often the value it
answers is the reviewed one (a fill gives one value), then by the likelihood; but T = 0 (the prior alone)
wherever its accuracy is within one standard error of the best (the evidence must earn its place: a few
hundred reviews rank weak evidence above none by chance). T = 1 is the classic prior
correction (Saerens et al. 2002); T = 0 answers the shop's most common value. π comes from the model
before adaptation, whose probabilities on the reviewed products are out of sample (the adapted model's
are not: it learned them), and a source or key with fewer than MIN_PRODUCTS reviewed gets no prior.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..data.schema import Product
from ..features.source import FeatureSource
from ..inference.predict import source_batches
from ..models.tag_tokenizer import tag_key
from ..models.tagger import Tagger

PSEUDO_COUNT = 20.0  # reviewed products' worth of weight the model's own mean keeps in q
MIN_PRODUCTS = 20  # reviewed products of a source and key before it gets a prior
TEMPERATURES = tuple(round(0.1 * i, 1) for i in range(11))
EPS = 1e-6


@torch.no_grad()
def fill_probabilities(model: Tagger, source: FeatureSource, batch_size: int = 256) -> tuple[np.ndarray, list[str]]:
    """[n, n_tags] the probabilities each product's required keys are filled from, and their sources."""
    probs, sources = [], []
    for batch in source_batches(source, batch_size):
        pred = model.predict_raw(batch, generate=False)
        for n in range(pred.tag_probs.shape[0]):
            p, src = model.fill_probabilities(pred, n)
            probs.append(p.float().numpy())
            sources.append(src)
    return (np.stack(probs) if probs else np.zeros((0, len(model.tags)), np.float32)), sources


def _prior_bias(share: np.ndarray, values: np.ndarray, pseudo_count: float, t: float,
                fit_rows: np.ndarray) -> np.ndarray:
    """log q - T log π̄ per value, q and π̄ estimated on `fit_rows` (a product's log-score of value v is
    T log share(v) + this)."""
    mean = share[fit_rows].mean(axis=0)
    counts = np.bincount(values[fit_rows], minlength=share.shape[1])
    q = (counts + pseudo_count * mean) / (len(fit_rows) + pseudo_count)
    return np.log(q) - t * np.log(mean)


def fit_key_prior(evidence: np.ndarray, values: np.ndarray, pseudo_count: float = PSEUDO_COUNT,
                  folds: int = 5) -> dict:
    """The temperature T and per-value bias (log q - T log π̄) of the prior-times-evidence model, from
    `evidence` [n, K] (the model's probabilities of the key's K values) and the reviewed `values` [n].
    T is chosen by `folds`-fold cross-validation (q and π̄ from the other folds): the best by how often the
    answered value is the reviewed one (a fill gives one value), then by the likelihood; T = 0 instead where
    its accuracy is within one standard error of that best."""
    share = evidence.clip(EPS) / evidence.clip(EPS).sum(axis=1, keepdims=True)
    n = len(values)
    parts = np.array_split(np.random.default_rng(0).permutation(n), min(folds, n))

    def held_out(t: float) -> tuple[float, float]:
        right = log_lik = 0.0
        for held in parts:
            bias = _prior_bias(share, values, pseudo_count, t, np.setdiff1d(np.arange(n), held))
            scores = t * np.log(share[held]) + bias
            log_p = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
            right += float((scores.argmax(axis=1) == values[held]).sum())
            log_lik += float(log_p[np.arange(len(held)), values[held]].sum())
        return right, log_lik

    scored = {t: held_out(t) for t in TEMPERATURES}
    best = max(TEMPERATURES, key=scored.get)
    accuracy = scored[best][0] / n
    floor = scored[best][0] - n * np.sqrt(accuracy * (1 - accuracy) / n)  # one standard error, in products
    chosen = 0.0 if scored[0.0][0] >= floor else best
    return {"temperature": chosen, "bias": _prior_bias(share, values, pseudo_count, chosen, np.arange(n))}


def key_priors(model: Tagger, probs: np.ndarray, sources: Sequence[str], products: Sequence[Product],
               reviewed: Mapping[str, set[str]] | None = None,
               min_products: int = MIN_PRODUCTS) -> dict[str, dict[str, dict]]:
    """{source: {key: {"temperature", "bias": {tag: b}}}} for every required key and fill source with at
    least `min_products` products whose labels (as feedback says) hold exactly one value of that key and,
    with `reviewed` ({product id: the keys its reviewers judged}), whose reviewers judged that key: a
    stored tag nobody looked at is the model's own answer, not the shop's."""
    index = {t: j for j, t in enumerate(model.tags)}
    out: dict[str, dict[str, dict]] = {}
    for key in dict.fromkeys(k for keys in model.required.values() for k in keys):
        tags = [t for t in model.tags if tag_key(t) == key]
        position = {t: i for i, t in enumerate(tags)}
        for source in sorted(set(sources)):
            rows, values = [], []
            for i, p in enumerate(products):
                known = [position[t] for t in p.tags if t in position]
                looked = reviewed is None or key in reviewed.get(p.id, ())
                if sources[i] == source and len(known) == 1 and looked:
                    rows.append(i)
                    values.append(known[0])
            if len(rows) < min_products:
                continue
            prior = fit_key_prior(probs[np.ix_(rows, [index[t] for t in tags])], np.array(values))
            out.setdefault(source, {})[key] = {"temperature": prior["temperature"],
                                               "bias": {t: round(float(b), 5) for t, b in zip(tags, prior["bias"])}}
    return out


def learn_key_priors(parent: Tagger, judged: FeatureSource,
                     reviewed: Mapping[str, set[str]] | None = None) -> dict[str, dict[str, dict]]:
    """The shop's key priors from its judged products (features and labels; `reviewed`: see key_priors),
    read through `parent` (the model before adaptation: out of sample); what `Tagger.set_key_priors` takes."""
    if not parent.required or len(judged) == 0:
        return {}
    probs, sources = fill_probabilities(parent, judged)
    return key_priors(parent, probs, sources, judged.products, reviewed)
