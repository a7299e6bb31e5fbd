"""Importer for product1m-zh: Chinese cosmetics listings from Product1M (Taobao), text only.

Each line of `product1m_{dev,test}_ossurl_v2.txt` is `item_id#####title#####url#####url#####names`, `names`
a `#;#`-separated list of the product names in the listing (`AHC 黄金面霜#;#AHC 黄金水`). A product:
id = item_id, title = the listing title, tags = its distinct names (verbatim: the exact names
are what is scored), category = the brand (the names' first word, the most common one when they differ),
no photo (the URLs cannot be fetched here). The source's dev/test files are both evaluation sets of
Product1M, so both are read and split afresh by a hash of item_id: 70% train, 10% val, 20% test
(data_cards/product1m-zh.md). A malformed line is refused naming its file, line and field.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..validate import Issue
from .base import ImportSource, RawRow, hash_split

FILES = ("product1m_dev_ossurl_v2.txt", "product1m_test_ossurl_v2.txt")
FIELDS = ("id", "title", "image_url", "oss_url", "names")
VAL, TEST = 0.1, 0.2


def parse_names(text: str) -> list[str]:
    """Distinct product names of a listing, in their first order."""
    return list(dict.fromkeys(n.strip() for n in text.split("#;#") if n.strip()))


def brand_of(names: list[str]) -> str | None:
    """The most common first word of the names (the brand), or None when there are none."""
    brands = Counter(n.split()[0] for n in names if n.split())
    return brands.most_common(1)[0][0] if brands else None


def parse_line(line: str, file: str, n: int) -> dict | Issue:
    """One listing as a catalog row, or the Issue that refuses it."""
    parts = line.rstrip("\r\n").split("#####")
    if len(parts) != len(FIELDS):
        return Issue(file, n, "line", f"expected {len(FIELDS)} fields separated by '#####', found {len(parts)}",
                     raw=line[:500])
    raw = dict(zip(FIELDS, (p.strip() for p in parts)))
    names = parse_names(raw["names"])
    if not names:
        return Issue(file, n, "names", "no product names after the last '#####'", raw=line[:500])
    return {"id": raw["id"], "title": raw["title"], "description": "", "image": None,
            "category": brand_of(names), "tags": names, "language": "zh",
            "split": hash_split(raw["id"], val=VAL, test=TEST) if raw["id"] else None,
            "extra": {"source": f"{file}:{n}", "image_url": raw["image_url"]}}


def _rows(files: list[Path]) -> Iterator[RawRow]:
    row = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row += 1
                    yield row, parse_line(line, path.name, n)


def read(path: str | Path, **_: object) -> ImportSource:
    """The product1m-zh folder (both files) or one of its files, as an ImportSource. Rows are numbered
    across the files read; each product keeps its own `file:line` in extra['source']."""
    path = Path(path)
    files = [path / name for name in FILES if (path / name).exists()] if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"{path}: no product1m_*_ossurl_v2.txt here; point --data at the product1m-zh folder")
    return ImportSource("product1m-zh", str(path), _rows(files), path if path.is_dir() else path.parent, 1,
                        meta={"split": f"hash of item_id, {1 - VAL - TEST:.0%}/{VAL:.0%}/{TEST:.0%} train/val/test",
                              "language": "zh", "category": "brand (first word of the product names)"})
