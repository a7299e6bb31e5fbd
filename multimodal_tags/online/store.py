"""The tag store: every product's current tags with provenance, and the history of changes (SQLite, WAL).

`products` holds one row per product id: category, tags (JSON, with scores and sources), the model
id and content hash that produced them, when, and `removed_at` once the product left the catalog.
`history` appends a row for every change (new, changed, retagged, removed), so any past state can be
reconstructed. Writes happen in one transaction per batch: an interrupted job leaves whole batches.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, model_id TEXT NOT NULL, category TEXT,
    category_score REAL, tags TEXT NOT NULL, updated_at REAL NOT NULL, removed_at REAL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, product_id TEXT NOT NULL, at REAL NOT NULL, change TEXT NOT NULL,
    model_id TEXT, content_hash TEXT, category TEXT, tags TEXT
);
CREATE INDEX IF NOT EXISTS history_product ON history(product_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class TagStore:
    """Current tags and their history, in one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "TagStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state(self, product_id: str) -> tuple[str, str, float | None] | None:
        """(content_hash, model_id, removed_at) of a product, or None if never stored."""
        return self.db.execute("SELECT content_hash, model_id, removed_at FROM products WHERE id = ?",
                               (product_id,)).fetchone()

    def change_kind(self, product_id: str, content_hash: str, model_id: str) -> str:
        """What tagging this product now would be: 'new' (never stored, or removed), 'unchanged' (same
        content, same model), 'changed' (other content) or 'retagged' (same content, other model)."""
        st = self.state(product_id)
        if st is None or st[2] is not None:
            return "new"
        if (st[0], st[1]) == (content_hash, model_id):
            return "unchanged"
        return "changed" if st[0] != content_hash else "retagged"

    def get(self, product_id: str) -> dict | None:
        row = self.db.execute("SELECT id, content_hash, model_id, category, category_score, tags, updated_at, "
                              "removed_at FROM products WHERE id = ?", (product_id,)).fetchone()
        if row is None:
            return None
        keys = ("id", "content_hash", "model_id", "category", "category_score", "tags", "updated_at", "removed_at")
        d = dict(zip(keys, row))
        d["tags"] = json.loads(d["tags"])
        return d

    def write(self, rows: Iterable[dict], changes: dict[str, str]) -> None:
        """Upsert prediction rows (see eval.predict.prediction_rows) in one transaction; `changes` maps
        each id to the history entry it gets ('new', 'changed', 'retagged', 'unchanged' = no entry)."""
        now = time.time()
        with self.db:
            for r in rows:
                tags = json.dumps({t: {"score": r["tag_scores"][t], "source": r["tag_sources"][t]} for t in r["tags"]},
                                  ensure_ascii=False)
                self.db.execute(
                    "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT(id) DO UPDATE SET "
                    "content_hash=excluded.content_hash, model_id=excluded.model_id, category=excluded.category, "
                    "category_score=excluded.category_score, tags=excluded.tags, updated_at=excluded.updated_at, "
                    "removed_at=NULL",
                    (r["id"], r["content_hash"], r["model_id"], r["category"], r["category_score"], tags, now))
                change = changes.get(r["id"], "new")
                if change != "unchanged":
                    self.db.execute("INSERT INTO history (product_id, at, change, model_id, content_hash, category, tags) "
                                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    (r["id"], now, change, r["model_id"], r["content_hash"], r["category"], tags))

    def mark_removed(self, seen_table: str) -> int:
        """Mark every live product whose id is not in the temp table `seen_table` as removed."""
        now = time.time()
        with self.db:
            gone = [r[0] for r in self.db.execute(
                f"SELECT id FROM products WHERE removed_at IS NULL AND id NOT IN (SELECT id FROM {seen_table})")]
            for pid in gone:
                self.db.execute("UPDATE products SET removed_at = ? WHERE id = ?", (now, pid))
                self.db.execute("INSERT INTO history (product_id, at, change) VALUES (?, ?, 'removed')", (pid, now))
        return len(gone)

    def history(self, product_id: str) -> list[dict]:
        rows = self.db.execute("SELECT at, change, model_id, content_hash, category, tags FROM history "
                               "WHERE product_id = ? ORDER BY seq", (product_id,)).fetchall()
        return [{"at": a, "change": c, "model_id": m, "content_hash": h, "category": cat,
                 "tags": json.loads(t) if t else None} for a, c, m, h, cat, t in rows]

    def counts(self) -> dict[str, int]:
        live = self.db.execute("SELECT COUNT(*) FROM products WHERE removed_at IS NULL").fetchone()[0]
        removed = self.db.execute("SELECT COUNT(*) FROM products WHERE removed_at IS NOT NULL").fetchone()[0]
        return {"live": live, "removed": removed}
