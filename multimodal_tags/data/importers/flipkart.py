"""Importer for the Flipkart sample (`products.csv`, `images/`): a non-fashion second source.

Category = first level of `product_category_tree`; tags = `product_specifications` key/value pairs,
normalised like every tag (lower-cased `key:value`), minus identifiers and logistics keys.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ..readers import ROW_WARNINGS, iter_raw_rows
from ..validate import Issue
from ..vocab import normalise_tag
from .base import ImportSource, RawRow, hash_split

# Identifiers, packaging and warranty terms: unique per product or not about what it is.
SKIP_KEYS = {
    "model name", "model id", "model number", "part number", "sales package", "warranty summary",
    "warranty service type", "covered in warranty", "not covered in warranty", "domestic warranty",
    "international warranty", "warranty", "net quantity", "pack of", "number of contents in sales package",
}
_PAIR = re.compile(r'"key"\s*=>\s*"((?:[^"\\]|\\.)*)"\s*,\s*"value"\s*=>\s*"((?:[^"\\]|\\.)*)"')
MIN_TAG_COUNT = 5


def parse_specifications(text: str) -> list[tuple[str, str]]:
    """The (key, value) pairs of a Ruby-hash-like `product_specifications` string."""
    return [(k.replace('\\"', '"'), v.replace('\\"', '"')) for k, v in _PAIR.findall(text or "")]


def top_category(tree: str) -> str | None:
    """'["A >> B >> C"]' -> 'A'."""
    try:
        paths = json.loads(tree)
        first = paths[0] if isinstance(paths, list) and paths else str(paths)
    except (json.JSONDecodeError, TypeError):
        first = (tree or "").strip('[]"')
    top = first.split(">>")[0].strip()
    return top or None


def spec_tags(spec: str) -> list[str]:
    tags = {normalise_tag(k, v) for k, v in parse_specifications(spec) if k.strip().lower() not in SKIP_KEYS}
    return sorted(t for t in tags if t)


def _rows(root: Path, csv_path: Path) -> Iterator[RawRow]:
    for n, r in iter_raw_rows(csv_path):  # the one CSV reader: BOM, broken quotes, bad bytes
        if isinstance(r, Issue):
            yield n, r
            continue
        pid = (r.get("uniq_id") or "").strip()
        image = (r.get("image") or "").strip()
        extra = {k: r[k] for k in ("brand", "retail_price", "discounted_price", "product_category_tree",
                                   "product_url", "pid") if r.get(k)}
        row = {"id": pid, "title": r.get("product_name"), "description": r.get("description"),
               "image": f"images/{image}" if image else None,
               "category": top_category(r.get("product_category_tree", "")),
               "tags": spec_tags(r.get("product_specifications", "")),
               "split": hash_split(pid) if pid else None, "language": "en", "extra": extra}
        if ROW_WARNINGS in r:
            row[ROW_WARNINGS] = r[ROW_WARNINGS]
        yield n, row


def read(path: str | Path, **_: object) -> ImportSource:
    """The Flipkart folder as an ImportSource."""
    root = Path(path)
    csv_path = root / "products.csv"
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} not found: point --data at the flipkart-1050 folder")
    return ImportSource("flipkart-1050", str(csv_path), _rows(root, csv_path), root, MIN_TAG_COUNT,
                        meta={"split": "hash of uniq_id, 80/10/10"})
