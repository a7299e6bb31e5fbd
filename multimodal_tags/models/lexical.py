"""A lexical text branch: a learned projection of the product text's TF-IDF vector (hashed words and
word bigrams).

A frozen sentence encoder compresses a product text into one vector and blurs exact words ("navy"
vs "blue", brand names, "V-neck"), which is what many tags hinge on; a TF-IDF + linear SVM on the
raw words is a strong tag baseline for that reason. This branch, trained with the heads, sees the
same signal: the L2-normalised, IDF-weighted bag of hashed unigrams and bigrams, projected to
`dim` (an EmbeddingBag in "sum" mode is exactly that sparse matrix product). IDF weighting matters:
product descriptions share long boilerplate ("machine wash cold ...") that a plain mean would let
drown the few words that decide a tag. The IDF table is fitted on the training texts and saved with
the model. The vector is concatenated to the text encoder's before fusion, so the text modality
(and its gate weight) covers both. With `dim=0` there is no trained projection: the branch only
supplies the TF-IDF weights that the word scores (models/word_scores.py) read.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[\u3400-\u9fff]")  # Latin words; each CJK character
WIDTH = 384  # ids kept per text: covers the distinct grams of 99% of Myntra texts


def _grams(text: str, max_tokens: int) -> list[str]:
    words = _WORD.findall(text.lower())[:max_tokens]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _bucket(gram: str, buckets: int) -> int:
    return 1 + zlib.crc32(gram.encode()) % (buckets - 1)


def lexical_ids(text: str, buckets: int, title: str = "", max_tokens: int = 512) -> list[int]:
    """Distinct hashed ids (1..buckets-1; 0 is padding): the title's words and bigrams marked as
    title words, then the words and bigrams of the whole text.

    The title is where a shop states colour, gender and article type ("Wrangler Men White Shirt");
    the description may mention other colours ("with blue stripes"). Marking title words lets the
    model tell the two apart, where a plain bag cannot."""
    marked = [_bucket("\x01" + g, buckets) for g in _grams(title, max_tokens)] if title else []
    return list(dict.fromkeys(marked + [_bucket(g, buckets) for g in _grams(text, max_tokens)]))


def lexical_matrix(texts: Sequence[str], buckets: int, width: int = WIDTH,
                   titles: Sequence[str] | None = None) -> np.ndarray:
    """[n, width] padded id matrix (0 = padding); longer texts keep their first `width` ids,
    title and unigrams first, so the words of the title always count."""
    out = np.zeros((len(texts), width), dtype=np.int64)
    for i, t in enumerate(texts):
        ids = lexical_ids(t, buckets, titles[i] if titles is not None else "")[:width]
        out[i, :len(ids)] = ids
    return out


def product_lexical_matrix(products, buckets: int) -> np.ndarray:
    """The lexical id matrix of catalog products (title marked, then title + description)."""
    return lexical_matrix([p.text for p in products], buckets, titles=[p.title or "" for p in products])


class LexicalEncoder(nn.Module):
    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("idf", torch.ones(buckets))  # fitted by fit_idf, saved with the model
        if dim == 0:  # TF-IDF weights only (what the word scores read), no trained projection
            return
        # sparse gradients: a batch touches a few thousand of the table's rows, and a dense AdamW step
        # over all of them was a third of a training step (the loop gives them a SparseAdam)
        self.bag = nn.EmbeddingBag(buckets, dim, mode="sum", padding_idx=0, sparse=True)
        nn.init.normal_(self.bag.weight, std=0.1)
        self.norm = nn.LayerNorm(dim)

    @torch.no_grad()
    def fit_idf(self, ids: torch.Tensor) -> None:
        """Smoothed IDF (as scikit-learn's) of every bucket over the training texts' id matrix."""
        n = ids.shape[0]
        df = torch.bincount(ids.flatten(), minlength=self.idf.numel()).to(self.idf.dtype)
        self.idf.copy_(torch.log((1 + n) / (1 + df)) + 1)

    def tfidf(self, ids: torch.Tensor) -> torch.Tensor:
        """Each id's weight in the text's L2-normalised TF-IDF vector (0 for padding)."""
        weights = self.idf[ids] * (ids > 0)  # ids are distinct per text: binary tf x idf
        return weights / weights.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The projected text vector ([b, 0] when dim is 0); `weights`: the ids' TF-IDF weights, when
        already computed."""
        if self.dim == 0:
            return self.idf.new_zeros(ids.shape[0], 0)
        weights = self.tfidf(ids) if weights is None else weights
        return self.norm(self.bag(ids, per_sample_weights=weights.to(self.bag.weight.dtype)))
