"""The tag store: every product's current tags with provenance, and the history of changes (SQLite, WAL).

`products` holds one row per product id: category, tags (JSON, with scores and sources), the model
id and content hash that produced them, when, and `removed_at` once the product left the catalog.
`records` keeps the product each current row was computed from (what feedback learning re-reads).
`history` appends a row for every change (new, changed, retagged, removed), so any past state can be
reconstructed. Writes happen in one transaction per batch: an interrupted job leaves whole batches.

The connection runs in autocommit mode and every write opens its transaction with BEGIN IMMEDIATE:
a read never holds a transaction open, so a writer never has to upgrade one (SQLite cannot wait for
that, and would fail at once with "database is locked"); instead it waits, up to the timeout, for
another process's write to finish.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Container, Iterable, Iterator
from pathlib import Path

from ..data.schema import Product

BUSY_TIMEOUT_S = 60  # how long a write waits for another process's write to finish
SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(ValueError):
    """A tag store path that cannot be used: the message names the file and the cause."""


def check_store(path: str | Path, create: bool = False) -> Path:
    """`path` when it is a tag store this process can use (or, with `create`, can make one at); else
    StoreError in one line. Commands call it before loading any model, so a typo costs nothing."""
    path = Path(path)
    if not path.exists():
        if not create:
            raise StoreError(f"{path}: no tag store there (check the path; --create makes a new one)")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
            raise StoreError(f"{path}: cannot make a store there: the folder {path.parent} is missing or not writable")
        return path
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a tag store file")
    if not path.is_file():
        raise StoreError(f"{path}: is not a regular file (a pipe or a device?), so not a tag store")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StoreError(f"{path}: cannot be read ({e.strerror})") from None
    if head and head != SQLITE_MAGIC:
        raise StoreError(f"{path}: is not a SQLite database, so not a tag store")
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise StoreError(f"{path}: is not writable (the store and its folder must be: SQLite keeps its "
                         "write-ahead log beside it)")
    return path

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
CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, product TEXT NOT NULL);
"""


class TagStore:
    """Current tags and their history, in one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not just a crash
        with self.transaction():
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(statement)
            if "review" not in {r[1] for r in self.db.execute("PRAGMA table_info(products)")}:
                self.db.execute("ALTER TABLE products ADD COLUMN review TEXT")  # stores made before it: NULL

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (BEGIN IMMEDIATE): committed, or rolled back on error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

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
        row = self.db.execute(f"SELECT {', '.join(ROW_KEYS)} FROM products WHERE id = ?", (product_id,)).fetchone()
        return None if row is None else _row_dict(row)

    def live_rows(self) -> Iterator[dict]:
        """Every live product's row, as `get` gives it."""
        for row in self.db.execute(f"SELECT {', '.join(ROW_KEYS)} FROM products WHERE removed_at IS NULL ORDER BY id"):
            yield _row_dict(row)

    def write(self, rows: Iterable[dict], changes: dict[str, str], products: Iterable[Product] = ()) -> None:
        """Upsert output rows (see inference.rows.prediction_row) in one transaction; `changes` maps each
        id to the history entry it gets ('new', 'changed', 'retagged'; 'unchanged': none). Callers
        that have not compared the rows with the store take the kinds from `pending_change`.
        `products`, the rows' products, are kept in `records`."""
        now = time.time()
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)",
                                [(p.id, p.content_hash, json.dumps(p.to_dict(), ensure_ascii=False)) for p in products])
            for r in rows:
                tags = _tags_json(r)
                change = changes.get(r["id"], "new")
                self.db.execute(
                    "INSERT INTO products (id, content_hash, model_id, category, category_score, tags, updated_at, "
                    "removed_at, review) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT(id) DO UPDATE SET "
                    "content_hash=excluded.content_hash, model_id=excluded.model_id, category=excluded.category, "
                    "category_score=excluded.category_score, tags=excluded.tags, updated_at=excluded.updated_at, "
                    "removed_at=NULL, review=excluded.review",
                    (r["id"], r["content_hash"], r["model_id"], r["category"], r["category_score"], tags, now,
                     _review_json(r)))
                if change != "unchanged":
                    self.db.execute("INSERT INTO history (product_id, at, change, model_id, content_hash, category, tags) "
                                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    (r["id"], now, change, r["model_id"], r["content_hash"], r["category"], tags))

    def pending_change(self, row: dict) -> str | None:
        """The history entry this output row needs, or None when the store holds it already. Same content
        and model but other tags or category (tagged with another tag source, say) is 'retagged': every
        change of the current tags is in the history."""
        kind = self.change_kind(row["id"], row["content_hash"], row["model_id"])
        if kind != "unchanged":
            return kind
        return None if self._current(row["id"]) == (row["category"], _tags_json(row)) else "retagged"

    def _current(self, product_id: str) -> tuple[str | None, str] | None:
        return self.db.execute("SELECT category, tags FROM products WHERE id = ? AND removed_at IS NULL",
                               (product_id,)).fetchone()

    def mark_removed(self, live: Container[str]) -> int:
        """Mark every live product whose id is not in `live` (the catalog's ids) as removed; its history
        entry keeps the tags it had."""
        now = time.time()
        with self.transaction():
            stored = self.db.execute("SELECT id, model_id, content_hash, category, tags FROM products "
                                     "WHERE removed_at IS NULL").fetchall()
            gone = [row for row in stored if row[0] not in live]
            for pid, model_id, content_hash, category, tags in gone:
                self.db.execute("UPDATE products SET removed_at = ? WHERE id = ?", (now, pid))
                self.db.execute("INSERT INTO history (product_id, at, change, model_id, content_hash, category, tags) "
                                "VALUES (?, ?, 'removed', ?, ?, ?, ?)", (pid, now, model_id, content_hash, category, tags))
        return len(gone)

    def products(self, ids: Iterable[str]) -> dict[str, Product]:
        """The kept products (see `write`) of those ids that have one."""
        out = {}
        for pid in ids:
            row = self.db.execute("SELECT product FROM records WHERE id = ?", (pid,)).fetchone()
            if row is not None:
                out[pid] = Product.from_dict(json.loads(row[0]))
        return out

    def product_dicts(self, ids: Iterable[str]) -> dict[str, dict]:
        """The kept products of those ids that have one, as the dicts they were stored as."""
        ids, out = list(ids), {}
        for start in range(0, len(ids), 500):  # SQLite caps the variables of one statement
            chunk = ids[start:start + 500]
            rows = self.db.execute(f"SELECT id, product FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            out.update((pid, json.loads(text)) for pid, text in rows)
        return out

    def has_product(self, product_id: str) -> bool:
        """Whether the store knows the product (tagged at some point, live or removed)."""
        return self.state(product_id) is not None

    def history(self, product_id: str) -> list[dict]:
        rows = self.db.execute("SELECT at, change, model_id, content_hash, category, tags FROM history "
                               "WHERE product_id = ? ORDER BY seq", (product_id,)).fetchall()
        return [{"at": a, "change": c, "model_id": m, "content_hash": h, "category": cat,
                 "tags": json.loads(t) if t else None} for a, c, m, h, cat, t in rows]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def counts(self) -> dict[str, int]:
        live = self.db.execute("SELECT COUNT(*) FROM products WHERE removed_at IS NULL").fetchone()[0]
        removed = self.db.execute("SELECT COUNT(*) FROM products WHERE removed_at IS NOT NULL").fetchone()[0]
        return {"live": live, "removed": removed}


ROW_KEYS = ("id", "content_hash", "model_id", "category", "category_score", "tags", "updated_at", "removed_at",
            "review")


def _row_dict(row: tuple) -> dict:
    d = dict(zip(ROW_KEYS, row))
    d["tags"] = json.loads(d["tags"])
    d["review"] = json.loads(d["review"]) if d["review"] else {}
    return d


def _review_json(row: dict) -> str:
    """What a review queue orders by, beside the tags: the category's runners-up, the head's tags just under
    their thresholds, and the thresholds (inference.rows.prediction_row)."""
    return json.dumps({k: row.get(k) or {} for k in ("category_top", "suggested", "tag_thresholds")},
                      ensure_ascii=False)


def _tags_json(row: dict) -> str:
    """How the store keeps an output row's tags: {tag: {"score", "source"}} in the row's order."""
    return json.dumps({t: {"score": row["tag_scores"][t], "source": row["tag_sources"][t]} for t in row["tags"]},
                      ensure_ascii=False)
