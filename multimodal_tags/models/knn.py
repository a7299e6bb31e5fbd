"""A nearest-neighbour tagger on cached features: the reference every trained model must beat.

Each product's text and image vectors are L2-normalised and concatenated (a missing modality is a
zero block, so it simply does not vote); the k most similar training products vote for the
category and for each tag with their cosine similarity. No training, so it also shows how much
the frozen encoders alone already know.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def fuse(blocks: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate L2-normalised modality blocks, zeroing absent ones."""
    parts = []
    for x, m in zip(blocks, masks):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        parts.append(x * m[:, None])
    return np.concatenate(parts, axis=1)


class KNNTagger:
    """Similarity-weighted k-nearest-neighbour votes for category and tags."""

    def __init__(self, k: int = 10, tag_threshold: float = 0.5):
        self.k, self.tag_threshold = k, tag_threshold

    def fit(self, features: np.ndarray, categories: Sequence[str | None], tags: Sequence[Sequence[str]]) -> "KNNTagger":
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        self.x = features / np.maximum(norms, 1e-12)
        self.categories, self.tags = list(categories), [set(t) for t in tags]
        return self

    def predict(self, features: np.ndarray, batch: int = 1024) -> list[dict]:
        """For each row: category, its score, and every voted tag's score (share of neighbour weight)."""
        q = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        k = min(self.k, len(self.x))
        out = []
        for s in range(0, len(q), batch):
            sims = q[s:s + batch] @ self.x.T
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            for row, nb in zip(sims, idx):
                w = np.clip(row[nb], 0.0, None) + 1e-6
                total = w.sum()
                cat_votes: dict[str, float] = defaultdict(float)
                tag_votes: dict[str, float] = defaultdict(float)
                for j, wj in zip(nb, w):
                    if self.categories[j] is not None:
                        cat_votes[self.categories[j]] += wj
                    for t in self.tags[j]:
                        tag_votes[t] += wj
                cat = max(cat_votes, key=cat_votes.get) if cat_votes else None
                out.append({"category": cat, "category_score": float(cat_votes[cat] / total) if cat else 0.0,
                            "tag_scores": {t: float(v / total) for t, v in sorted(tag_votes.items(), key=lambda kv: -kv[1])}})
        return out

    def tags_of(self, prediction: dict, threshold: float | None = None) -> list[str]:
        th = self.tag_threshold if threshold is None else threshold
        return [t for t, s in prediction["tag_scores"].items() if s >= th]
