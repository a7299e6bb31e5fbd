"""A lexical text branch: hashed word unigrams and bigrams, averaged embeddings (fastText-style).

A frozen sentence encoder compresses a product text into one vector and blurs exact words ("navy"
vs "blue", brand names, "V-neck"), which is what many tags hinge on. This branch, trained with the
heads, sees those words directly and is cheap on a CPU. Its vector is concatenated to the text
encoder's before fusion, so the text modality (and its gate weight) covers both.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[\u3400-\u9fff]")  # Latin words; each CJK character


def lexical_ids(text: str, buckets: int, max_tokens: int = 256) -> list[int]:
    """Hashed ids (1..buckets-1; 0 is padding) of the text's words and word bigrams."""
    words = _WORD.findall(text.lower())[:max_tokens]
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [1 + zlib.crc32(g.encode()) % (buckets - 1) for g in grams]


def lexical_matrix(texts: Sequence[str], buckets: int, width: int = 128) -> np.ndarray:
    """[n, width] padded id matrix (0 = padding); longer texts keep their first `width` ids,
    unigrams first, so the words of the title always count."""
    out = np.zeros((len(texts), width), dtype=np.int64)
    for i, t in enumerate(texts):
        ids = lexical_ids(t, buckets)[:width]
        out[i, :len(ids)] = ids
    return out


class LexicalEncoder(nn.Module):
    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=0)
        nn.init.normal_(self.bag.weight, std=0.1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.bag(ids))
