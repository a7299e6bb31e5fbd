"""Read, validate and write product catalogs (JSONL, CSV, Parquet).

Reading streams: `iter_catalog` yields one validated row at a time, so a catalog of any length
goes through in bounded memory. A bad row becomes an Issue naming file, row, field and reason;
the good rows go on. Each catalog may have a sidecar `<name>.meta.json` (image root, tag
vocabulary, source) written by the importers.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .readers import ROW_WARNINGS, RawRow, catalog_format, iter_raw_rows
from .schema import Product
from .validate import Issue, Limits, printable, validate_row

META_FORMAT = "mmtags-catalog/1"


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def read_meta(path: Path) -> dict[str, Any]:
    """The catalog's sidecar metadata, or {} when it has none."""
    mp = meta_path(Path(path))
    return json.loads(mp.read_text(encoding="utf-8")) if mp.exists() else {}


def image_root_for(path: Path, image_root: Path | str | None = None) -> Path:
    """Where image references resolve: the explicit root, else the sidecar's, else the catalog's folder."""
    if image_root is not None:
        return Path(image_root)
    meta_root = read_meta(path).get("image_root")
    if meta_root:
        return (Path(path).parent / meta_root).resolve()
    return Path(path).resolve().parent


MAX_ISSUES_SHOWN = 20  # issues printed to the console; the rejects file has them all


@dataclass
class ReadReport:
    """What reading a catalog did: counts, and every issue found."""

    file: str
    read: int = 0
    kept: int = 0
    rejected: int = 0
    issues: list[Issue] = field(default_factory=list)

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def summary(self) -> str:
        s = f"{self.file}: read {self.read} rows, kept {self.kept}, rejected {self.rejected}"
        if self.warnings:
            s += f" ({len(self.warnings)} kept with a warning)"
        return s


def validate_rows(rows: Iterable[RawRow], file: str, image_root: Path, limits: Limits, report: ReadReport,
                  seen: MutableMapping[str, int] | None = None) -> Iterator[Product]:
    """Validate raw rows (from a catalog file or an importer), yielding the good products and recording
    every issue in `report`. Duplicate ids: the first row wins, later ones are rejected. A rejected
    row's issues carry its original text, so it can be fixed and re-imported."""
    first_row: MutableMapping[str, int] = {} if seen is None else seen
    for n, raw in rows:
        report.read += 1
        if isinstance(raw, Issue):
            report.rejected += 1
            report.issues.append(raw)
            continue
        warnings = [Issue(file, n, f, reason, "warning") for f, reason in raw.pop(ROW_WARNINGS, [])]
        product, issues = validate_row(raw, file, n, image_root, limits)
        issues = warnings + issues
        if product is not None and product.id in first_row:
            issues = [Issue(file, n, "id", f"duplicate id {product.id!r} (first on row {first_row[product.id]})")]
            product = None
        if product is None:
            raw_text = printable(json.dumps(raw, ensure_ascii=False, default=str))
            for i in issues:
                i.raw = i.raw or raw_text
            report.rejected += 1
        else:
            first_row[product.id] = n
            report.kept += 1
        report.issues.extend(issues)
        if product is not None:
            yield product


def iter_catalog(path: str | Path, image_root: Path | str | None = None, limits: Limits | None = None,
                 report: ReadReport | None = None, seen: MutableMapping[str, int] | None = None) -> Iterator[Product]:
    """Yield the valid products of a catalog file, recording every issue in `report` (see
    `validate_rows`). `seen` (id -> first row) defaults to a dict; pass a `DiskIdIndex` to keep
    memory flat on huge catalogs."""
    path = Path(path)
    report = report if report is not None else ReadReport(str(path))
    yield from validate_rows(iter_raw_rows(path), str(path), image_root_for(path, image_root), limits or Limits(),
                             report, seen)


@dataclass
class Catalog:
    products: list[Product]
    report: ReadReport
    image_root: Path
    meta: dict[str, Any]


def read_catalog(path: str | Path, image_root: Path | str | None = None,
                 limits: Limits | None = None) -> Catalog:
    """Read a whole catalog into memory (see `iter_catalog` for streaming)."""
    path = Path(path)
    report = ReadReport(str(path))
    products = list(iter_catalog(path, image_root, limits, report))
    return Catalog(products, report, image_root_for(path, image_root), read_meta(path))


class DiskIdIndex(MutableMapping):
    """id -> row number, in a temporary SQLite file: duplicate detection in constant memory."""

    def __init__(self):
        import sqlite3

        self._dir = tempfile.TemporaryDirectory(prefix="mmtags-ids-")
        self.db = sqlite3.connect(Path(self._dir.name) / "ids.sqlite")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, row INTEGER NOT NULL)")

    def __getitem__(self, key: str) -> int:
        r = self.db.execute("SELECT row FROM ids WHERE id = ?", (key,)).fetchone()
        if r is None:
            raise KeyError(key)
        return r[0]

    def __setitem__(self, key: str, row: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO ids VALUES (?, ?)", (key, row))

    def __delitem__(self, key: str) -> None:
        self.db.execute("DELETE FROM ids WHERE id = ?", (key,))

    def __iter__(self):
        return (r[0] for r in self.db.execute("SELECT id FROM ids"))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM ids").fetchone()[0]

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _csv_row(d: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else ("" if v is None else v)
            for k, v in d.items()}


def write_catalog(products: Iterable[Product], path: str | Path, meta: dict[str, Any] | None = None) -> int:
    """Write products as JSONL, CSV or Parquet (by extension), atomically; returns the count."""
    path = Path(path)
    fmt = catalog_format(path)
    rows = [p.to_dict() for p in products]

    def write(tmp: Path) -> None:
        if fmt == "jsonl":
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(tmp, "wt", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        elif fmt == "csv":
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(tmp, "wt", encoding="utf-8", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id", "title"])
                w.writeheader()
                w.writerows(_csv_row(r) for r in rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            for r in rows:
                r["extra"] = json.dumps(r["extra"], ensure_ascii=False)
            pq.write_table(pa.Table.from_pylist(rows), tmp)

    _atomic_write(path, write)
    if meta is not None:
        meta = {"format": META_FORMAT, **meta, "products": len(rows)}
        _atomic_write(meta_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False),
                                                                   encoding="utf-8"))
    return len(rows)


def write_rejects(issues: Iterable[Issue], path: str | Path) -> int:
    """Write every issue (with the original row text) as JSONL; returns how many were written."""
    items = [i.to_dict() for i in issues]
    _atomic_write(Path(path), lambda tmp: tmp.write_text(
        "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8"))
    return len(items)
