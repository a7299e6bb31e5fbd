"""Encoder outputs stored on disk, keyed by (encoder cache key, item hash).

One SQLite file: an `encoders` table describing each encoder (spec, weights id, preprocessing)
and a `vectors` table of float32 blobs. Every batch is committed on its own, so an interrupted
run keeps what it wrote and a rerun continues; identical texts or photos share one vector.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS encoders (
    key TEXT PRIMARY KEY, spec TEXT NOT NULL, dim INTEGER NOT NULL, description TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    encoder TEXT NOT NULL, item TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (encoder, item)
) WITHOUT ROWID;
"""


class FeatureCache:
    """Vectors keyed by encoder and item hash (text hash or image-bytes hash)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "features.sqlite"
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")  # readers (training) do not block the writer
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._registered: set[str] = set()  # keys this connection has recorded (a service encodes per request)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def registered(self, key: str) -> bool:
        """Whether this connection has already recorded `key` (`register` would change nothing)."""
        return key in self._registered

    def register(self, key: str, spec: str, dim: int, description: dict) -> None:
        """Record what an encoder key means (first registration wins; the key is content-derived)."""
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO encoders VALUES (?, ?, ?, ?, ?)",
                            (key, spec, dim, json.dumps(description, default=str), time.time()))
        self._registered.add(key)

    def encoders(self) -> list[dict]:
        rows = self.db.execute("SELECT key, spec, dim, description FROM encoders ORDER BY created").fetchall()
        return [{"key": k, "spec": s, "dim": d, "vectors": self.count(k), **json.loads(desc)}
                for k, s, d, desc in rows]

    def dim(self, key: str) -> int:
        row = self.db.execute("SELECT dim FROM encoders WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"encoder key {key} is not in the cache {self.path}")
        return int(row[0])

    def cached_items(self, key: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT item FROM vectors WHERE encoder = ?", (key,))}

    def missing(self, key: str, items: Iterable[str]) -> list[str]:
        """Items (deduplicated, order kept) that have no vector yet."""
        wanted = list(dict.fromkeys(items))
        if len(wanted) < 5000:  # small requests (streaming batches): ask for those rows only
            have: set[str] = set()
            for s in range(0, len(wanted), 900):
                chunk = wanted[s:s + 900]
                have |= {r[0] for r in self.db.execute(
                    f"SELECT item FROM vectors WHERE encoder = ? AND item IN ({','.join('?' * len(chunk))})",
                    (key, *chunk))}
        else:
            have = self.cached_items(key)
        return [i for i in wanted if i not in have]

    def count(self, key: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM vectors WHERE encoder = ?", (key,)).fetchone()[0]

    def put(self, key: str, items: Sequence[str], vectors: np.ndarray) -> None:
        """Store one batch in one transaction."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                                [(key, i, v.tobytes()) for i, v in zip(items, vectors)])

    def get(self, key: str, items: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, dim], found mask [n]); rows of None or uncached items are zeros, found=False."""
        dim = self.dim(key)
        out = np.zeros((len(items), dim), dtype=np.float32)
        found = np.zeros(len(items), dtype=bool)
        wanted = {i for i in items if i is not None}
        lookup: dict[str, np.ndarray] = {}
        q = "SELECT item, vector FROM vectors WHERE encoder = ?"
        if len(wanted) < 5000:  # small requests: ask for those rows only
            ws = list(wanted)
            for s in range(0, len(ws), 900):
                chunk = ws[s:s + 900]
                rows = self.db.execute(q + f" AND item IN ({','.join('?' * len(chunk))})", (key, *chunk))
                lookup.update((i, np.frombuffer(b, dtype=np.float32)) for i, b in rows)
        else:
            lookup = {i: np.frombuffer(b, dtype=np.float32) for i, b in self.db.execute(q, (key,)) if i in wanted}
        for n, item in enumerate(items):
            v = lookup.get(item) if item is not None else None
            if v is not None:
                out[n], found[n] = v, True
        return out, found
