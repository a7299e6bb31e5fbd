"""Word scores: a TF-IDF linear SVM's per-tag scores, stacked under the deep model.

A linear SVM on the product text's TF-IDF vector is a strong tagger on its own: with one weight per
word and tag and a margin loss, it keeps the exact word evidence that a shared low-rank projection
blurs, and it abstains when no word is convincing. So the deep model is stacked on its scores: one
score per tag joins the text features before fusion, and, scaled (`WordScoreConfig.bias`),
is added to the GPT-2 decoder's logit for that tag's token at every step; the decoder starts from
the words' evidence and learns what the words do not say. With `WordScoreConfig.categories`
there is also one SVM per category (one-vs-rest), whose scores join the features and, x
`category_bias`, the category logits. What each choice measured: docs/experiments.md.

Stacking needs honest scores in training. An SVM scores its own training texts near-perfectly, so a
model trained on such scores learns to trust them blindly and is misled on new products. The training
products' scores are therefore cross-fitted (each fold scored by SVMs fitted on the other folds);
the SVMs fitted on the whole train split (or the mean of the folds' SVMs, `TrainConfig.word_score_final`)
score everything else (val, test, new products), and their
weights are saved in the model folder as a frozen table, so inference needs no scikit-learn. On disk the
table is pruned and sparse (`pack_table`): most of its 2^17 x tags weights are near zero.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import WORD_SCORE_FINALS
from .linear_svms import fit_svms


def smooth_idf(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Smoothed IDF of every bucket over an id matrix (the formula of LexicalEncoder.fit_idf)."""
    df = np.bincount(ids.ravel(), minlength=buckets).astype(np.float64)
    return (np.log((1 + ids.shape[0]) / (1 + df)) + 1).astype(np.float32)


def tfidf_csr(ids: np.ndarray, idf: np.ndarray):
    """The L2-normalised binary-tf x idf matrix of an id matrix (ids distinct per row, 0 = padding),
    as LexicalEncoder.tfidf weighs them, in scipy's sparse format."""
    from scipy.sparse import csr_matrix

    weights = idf[ids] * (ids > 0)
    weights /= np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-6)
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    keep = ids.ravel() > 0
    return csr_matrix((weights.ravel()[keep], (rows[keep], ids.ravel()[keep])), shape=(ids.shape[0], idf.size))


def cross_fitted_scores(ids: np.ndarray, y: np.ndarray, buckets: int, folds: int = 5, c: float = 1.0,
                        seed: int = 0, n_jobs: int = 1, extra_ids: np.ndarray | None = None,
                        extra_of: np.ndarray | None = None, tol: float = 1e-4,
                        final: str = "refit") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of the training products, each from SVMs that never saw it (`folds`-fold), and the
    weights and intercepts of the SVMs that score every other product.

    `final`: "refit" fits those SVMs once more on all the training products; "average" averages the
    folds' SVMs instead (one fit fewer, and the folds fitted on 1 - 1/folds of the rows each). A mean
    of linear SVMs scores every text with the mean of their scores, so the other products are scored
    by SVMs of the same kind as those that scored the training products. With "average" every fold
    weighs words by the whole split's IDF (no labels in it), so the folds share one feature space.

    `extra_ids` are further texts of training products (`extra_of`: the row of each one's product),
    such as copies with label words masked: each is scored by the SVMs of its product's held-out fold,
    which never saw that product; their scores follow the products' in the returned scores."""
    if final not in WORD_SCORE_FINALS:
        raise ValueError(f"final must be one of {', '.join(WORD_SCORE_FINALS)}, not {final!r}")
    n = ids.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    scores = np.zeros(y.shape, dtype=np.float32)
    extra_of = np.zeros(0, dtype=np.int64) if extra_of is None else np.asarray(extra_of)
    extra_scores = np.zeros((len(extra_of), y.shape[1]), dtype=np.float32)
    shared_idf = smooth_idf(ids, buckets) if final == "average" else None
    w_sum, b_sum = 0.0, 0.0
    for held in np.array_split(order, folds):
        fit_rows = np.setdiff1d(order, held)
        idf = smooth_idf(ids[fit_rows], buckets) if shared_idf is None else shared_idf
        w, b = fit_svms(tfidf_csr(ids[fit_rows], idf), y[fit_rows], c, n_jobs, tol=tol)
        scores[held] = tfidf_csr(ids[held], idf) @ w.T + b
        extras = np.isin(extra_of, held)
        if extras.any():
            extra_scores[extras] = tfidf_csr(extra_ids[extras], idf) @ w.T + b
        w_sum, b_sum = w_sum + w, b_sum + b
    if final == "average":
        w, b = (w_sum / folds).astype(np.float32), (b_sum / folds).astype(np.float32)
    else:
        w, b = fit_svms(tfidf_csr(ids, smooth_idf(ids, buckets)), y, c, n_jobs, tol=tol)
    return np.concatenate([scores, extra_scores]), w, b


class WordScores(nn.Module):
    """The fitted SVMs as a frozen table: scores = TF-IDF vector x weights + intercepts (buffers, so
    they are saved with the model and never trained)."""

    def __init__(self, buckets: int, n_tags: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(buckets, n_tags))
        self.register_buffer("intercept", torch.zeros(n_tags))

    @torch.no_grad()
    def load_fitted(self, weights: np.ndarray, intercepts: np.ndarray) -> None:
        """Install SVM weights [n_tags, buckets] and intercepts [n_tags] (from `cross_fitted_scores`)."""
        self.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights.T)))
        self.intercept.copy_(torch.from_numpy(intercepts))

    def forward(self, ids: torch.Tensor, tfidf: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(ids, self.weight, per_sample_weights=tfidf.float(), mode="sum",
                               padding_idx=0) + self.intercept


#: Weights at or below this magnitude are dropped when the table is saved: 85% of the Myntra model's
#: weights; its test metrics moved at the 4th decimal at most (docs/performance.md).
PRUNE_BELOW = 3e-3
PACKED = ("mask", "values")


def pack_table(weight: torch.Tensor, prune: float = PRUNE_BELOW) -> dict[str, torch.Tensor]:
    """A [buckets, tags] table as a bit mask of the weights kept (|w| > prune, 1 bit each) and their
    values in float16, row by row: smaller than index lists when a row keeps more than 1 tag in 16."""
    keep = (weight.abs() > prune).numpy()
    return {"mask": torch.from_numpy(np.packbits(keep, axis=1)),
            "values": weight[torch.from_numpy(keep)].to(torch.float16)}


def unpack_table(packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """The dense float32 table of `pack_table`'s parts."""
    keep = torch.from_numpy(np.unpackbits(packed["mask"].numpy(), axis=1, count=shape[1]).astype(bool))
    if keep.shape != torch.Size(shape) or int(keep.sum()) != packed["values"].numel():
        raise ValueError(f"packed word-score table does not fit {shape}")
    dense = torch.zeros(shape, dtype=torch.float32)
    dense[keep] = packed["values"].float()
    return dense
