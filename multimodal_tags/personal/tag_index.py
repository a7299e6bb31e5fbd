"""Recommendations from an index: the live products' tags as one sparse matrix, so matching a profile
is a sparse product and a partial sort (milliseconds at 44,000 products), not a scan of the store.

The score of a product is `profiles.match_score`: the idf-weighted affinity of its tags over the square
root of their weights' sum of squares. Row p of the matrix holds idf[t] / norm[p] for each tag t of p,
so the scores of every product are `matrix @ affinity`.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
from scipy.sparse import csr_matrix

from ..tagging.tag_store import TagStore

#: what changes whenever a product is tagged, re-tagged or removed (an index is stale when it differs)
SIGNATURE = "SELECT COUNT(*), MAX(updated_at), MAX(removed_at) FROM products"


def signature(store: TagStore) -> tuple:
    """The store's products' `SIGNATURE`."""
    return store.db.execute(SIGNATURE).fetchone()


def build_index(store_path) -> tuple[tuple, "TagIndex"]:
    """(the products' signature, their index), read on a connection of its own: a function of a path,
    so that a background process can run it (service/background.py)."""
    with TagStore(store_path) as own:
        return signature(own), TagIndex.build(own)


class TagIndex:
    """Live products' tags, weighted for profile matching (build once, query often)."""

    def __init__(self, ids: list[str], tag_columns: dict[str, int], matrix: csr_matrix):
        self.ids, self.tag_columns, self.matrix = ids, tag_columns, matrix
        self._id_rank = np.argsort(np.argsort(np.array(ids, dtype=object)))  # ties break by id, as a sort would

    @classmethod
    def build(cls, store: TagStore) -> "TagIndex":
        rows = store.db.execute("SELECT id, tags FROM products WHERE removed_at IS NULL").fetchall()
        tags = [(pid, sorted(set(json.loads(t)))) for pid, t in rows]
        df = Counter(t for _, ts in tags for t in ts)
        idf = {t: math.log((len(tags) + 1) / c) for t, c in df.items()}
        columns = {t: j for j, t in enumerate(sorted(df))}
        indptr, indices, values = [0], [], []
        for _, ts in tags:
            norm = math.sqrt(sum(idf[t] ** 2 for t in ts)) or 1.0
            indices += [columns[t] for t in ts]
            values += [idf[t] / norm for t in ts]
            indptr.append(len(indices))
        matrix = csr_matrix((np.array(values, dtype=np.float64), np.array(indices, dtype=np.int64), indptr),
                            shape=(len(tags), len(columns)))
        return cls([pid for pid, _ in tags], columns, matrix)

    def top(self, affinity: dict[str, float], k: int) -> list[dict]:
        """The k products that best match `affinity` (tag -> value), best first, ties by id."""
        if not self.ids:
            return []
        vector = np.zeros(len(self.tag_columns))
        for tag, value in affinity.items():
            if tag in self.tag_columns:
                vector[self.tag_columns[tag]] = value
        scores = self.matrix @ vector
        k = min(k, len(scores))
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= kth)  # every product tied with the k-th too
        best = candidates[np.lexsort((self._id_rank[candidates], -scores[candidates]))][:k]
        return [{"id": self.ids[i], "score": round(float(scores[i]), 5)} for i in best]
