"""Fit the word-score SVMs of a model (models/word_scores.py) for its train split, with a disk cache.

Cross-fitting is (folds + 1) rounds of one linear SVM per tag and category, minutes on a large
catalog; its result depends only on the train split's words and labels and the SVM settings, so it
is cached in the feature cache folder under a hash of exactly those, and a rerun (or a second model
on the same split, such as the benchmark's fine-tuned run) reuses it.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..config import TrainConfig
from ..files import temp_path
from ..models.tagger import Tagger
from ..models.word_scores import cross_fitted_scores
from .data import FeatureDataset


def _key(ids: np.ndarray, y: np.ndarray, tcfg: TrainConfig, *extra: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (ids, y, *extra):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    # default settings add nothing to the key, so the fits cached before they were settings stay valid
    tol = f" tol={tcfg.word_score_tol}" if tcfg.word_score_tol != TrainConfig.word_score_tol else ""
    final = f" final={tcfg.word_score_final}" if tcfg.word_score_final != TrainConfig.word_score_final else ""
    h.update(f"folds={tcfg.word_score_folds} c={tcfg.word_score_c} seed={tcfg.seed}{tol}{final}".encode())
    return h.hexdigest()[:24]


def fit_or_load_word_scores(train: FeatureDataset, buckets: int, tcfg: TrainConfig, cache_dir: str | Path,
                            log: Callable[[str], None] = print, n_categories: int = 0) -> dict[str, np.ndarray]:
    """The train split's cross-fitted scores and the SVMs fitted on all of it ("scores", "weights",
    "intercepts"), computed or read from `cache_dir/word_scores/`: one column per tag, then, with
    `n_categories`, one per category. Masked copies of train products (train/masked_copies.py) are
    scored, not fitted on: by the SVMs of their product's held-out fold."""
    n = train.n_original
    all_ids = train.lexical_ids.numpy()
    ids, extra_ids, extra_of = all_ids[:n], all_ids[n:], train.copy_of
    y = train.tags.numpy()[:n].astype(np.int64)  # LinearSVC wants plain integer labels
    if n_categories:  # one-vs-rest columns per category (a product of unknown category is negative for all)
        category = train.category.numpy()[:n]
        onehot = (category[:, None] == np.arange(n_categories)[None, :]).astype(np.int64)
        y = np.concatenate([y, onehot], axis=1)
    extras = (extra_ids, extra_of) if len(extra_of) else ()
    path = Path(cache_dir) / "word_scores" / f"{_key(ids, y, tcfg, *extras)}.safetensors"
    if path.exists():
        fitted = load_file(str(path))
        log(f"word scores: cached ({path.name})")
    else:
        t0 = time.perf_counter()
        scores, weights, intercepts = cross_fitted_scores(
            ids, y, buckets, tcfg.word_score_folds, tcfg.word_score_c, tcfg.seed,
            n_jobs=max(1, torch.get_num_threads()), extra_ids=extra_ids, extra_of=extra_of, tol=tcfg.word_score_tol,
            final=tcfg.word_score_final)
        fitted = {"scores": scores, "weights": weights, "intercepts": intercepts}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        save_file(fitted, str(tmp))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
        fits = tcfg.word_score_folds + (tcfg.word_score_final == "refit")
        log(f"word scores: {y.shape[1]} SVMs x {fits} fits on {len(y)} products "
            f"(+{len(extra_of)} masked copies scored) "
            f"in {time.perf_counter() - t0:.0f}s")
    return fitted


def prepare_word_scores(model: Tagger, train: FeatureDataset, tcfg: TrainConfig, cache_dir: str | Path,
                        log: Callable[[str], None] = print) -> None:
    """Give `train` its cross-fitted word scores and `model` the SVMs fitted on all of `train`."""
    if model.word_scores is None:
        return
    n_categories = len(model.categories) if model.cfg.word_scores.categories else 0
    fitted = fit_or_load_word_scores(train, model.cfg.lexical_buckets, tcfg, cache_dir, log, n_categories)
    model.word_scores.load_fitted(fitted["weights"], fitted["intercepts"])
    train.features.word_scores = torch.from_numpy(fitted["scores"])
