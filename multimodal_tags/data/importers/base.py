"""What every importer returns, and the one routine that validates and writes an import."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalog import RawRow, ReadReport, validate_rows, write_catalog, write_rejects
from ..schema import Product
from ..validate import Limits
from ..vocab import apply_vocab, build_vocab


@dataclass
class ImportSource:
    """A source format's rows, already mapped to catalog field names (id, title, ... tags)."""

    name: str
    file: str  # the file rows are numbered in, for issue reports
    rows: Iterator[RawRow]
    image_root: Path
    min_tag_count: int = 1  # vocabulary threshold over training products
    meta: dict[str, Any] = field(default_factory=dict)


def hash_split(product_id: str, val: float = 0.1, test: float = 0.1) -> str:
    """A fixed train/val/test split from the id's hash, for sources that ship none."""
    u = int(hashlib.sha256(product_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test else "val" if u < test + val else "train"


@dataclass
class ImportResult:
    products: list[Product]
    vocab: list[str]
    report: ReadReport


def run_import(source: ImportSource, out: str | Path | None = None, limits: Limits | None = None) -> ImportResult:
    """Validate every row, build the tag vocabulary on train, and write catalog + sidecar + rejects.

    Writes `out` (the catalog), `out.meta.json` and, when any row had an issue, `out.rejects.jsonl`.
    A source with no valid product writes no catalog (an empty one would only fail later): just the
    rejects.
    """
    report = ReadReport(source.file)
    products = list(validate_rows(source.rows, source.file, source.image_root, limits or Limits(), report))
    vocab = build_vocab(products, source.min_tag_count)
    apply_vocab(products, vocab)
    if out is not None:
        out = Path(out)
        meta = {"source": source.name, "image_root": str(Path(source.image_root).resolve()),
                "min_tag_count": source.min_tag_count, "tag_vocab": vocab, **source.meta,
                "import": {"read": report.read, "kept": report.kept, "rejected": report.rejected}}
        if products:
            write_catalog(products, out, meta)
        rejects = out.with_name(out.name + ".rejects.jsonl")
        if report.issues:
            write_rejects(report.issues, rejects)
        elif rejects.exists():
            rejects.unlink()
    return ImportResult(products, vocab, report)
