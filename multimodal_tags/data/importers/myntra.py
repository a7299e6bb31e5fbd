"""Importer for the Myntra fashion catalogue (`styles.jsonl.gz`, `images/`, `images-224/`, `splits.csv`).

Category = articleType; tags follow the tag benchmark v1 exactly (see data_cards/fashion-myntra.md):
gender/colour/season/usage plus descriptive articleAttributes, lower-cased `key:value`, kept when
seen >= 20 times among train products.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from ..readers import iter_raw_rows
from ..validate import Issue
from .base import ImportSource, RawRow

# Benchmark v1 exclusions: keys that describe logistics or sizing, not the product's look.
SKIP_KEYS = {
    "Body or Garment Size", "Wash Care", "Warranty", "Processing Time", "taxMaterial", "Brick", "Family",
    "Class", "Segment", "Business Unit", "Units Per Bundle", "Total Shelf Life in Months",
    "Minimum Shelf Life in Months", "Minimum Usable Period in Months", "Number of Components",
    "Multipack Set", "Brand Fit Name", "Colour Shade Name", "Fine Jewellery", "Assorted",
}
# Case-sensitive on purpose: the benchmark drops "None" but keeps e.g. "NONE".
SKIP_VALUES = {"", "NA", "N/A", "Other", "Others", "None", "null"}
TOP_FIELDS = (("gender", "gender"), ("colour", "baseColour"), ("season", "season"), ("usage", "usage"))
MIN_TAG_COUNT = 20
# What a product's text is made of; bumped when that changes, so a stored catalog can tell it is stale
# (2: description + materials_care + style_note, was description alone).
TEXT_VERSION = 2


def myntra_tags(r: dict) -> list[str]:
    """All candidate tags of one styles row (before the vocabulary threshold)."""
    tags = set()
    for key, fld in TOP_FIELDS:
        v = (r.get(fld) or "").strip()
        if v not in SKIP_VALUES:
            tags.add(f"{key}:{v}".lower())
    for k, v in (r.get("articleAttributes") or {}).items():
        v = (v or "").strip()
        if k in SKIP_KEYS or v in SKIP_VALUES:
            continue
        tags.add(f"{k.strip()}:{v}".lower())
    return sorted(tags)


def product_description(r: dict) -> str:
    """The product's whole text past its name: `description`, then `materials_care` and `style_note`.

    The last two are shop-written text about the product, present for about a third of it, and they
    name what tags hinge on ("100% cotton"); what they add is measured in docs/experiments.md.
    """
    parts = (r.get(k) for k in ("description", "materials_care", "style_note"))
    return " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())


def _image_ref(root: Path, pid: str) -> str | None:
    for folder in ("images-224", "images"):  # the sharper copy first
        if (root / folder / f"{pid}.jpg").exists():
            return f"{folder}/{pid}.jpg"
    return None


def _rows(root: Path, styles: Path, splits: dict[str, str]) -> Iterator[RawRow]:
    for n, r in iter_raw_rows(styles):  # the one JSONL reader: bad JSON, bad bytes, a broken gzip
        if isinstance(r, Issue):
            yield n, r
            continue
        pid = str(r.get("id", "")).strip()
        extra = {k: r[k] for k in ("brand", "masterCategory", "subCategory", "year", "ageGroup",
                                   "style_note", "materials_care", "articleAttributes")
                 if r.get(k) not in (None, "", {})}
        ref = _image_ref(root, pid) if pid else None
        if pid and ref is None:
            extra["image_error"] = "no photo in images/ or images-224/"
        yield n, {"id": pid, "title": r.get("name"), "description": product_description(r),
                  "image": ref, "category": r.get("articleType"), "tags": myntra_tags(r),
                  "split": splits.get(pid), "language": "en", "extra": extra}


def read(path: str | Path, **_: object) -> ImportSource:
    """The Myntra folder as an ImportSource."""
    root = Path(path)
    styles = root / "styles.jsonl.gz"
    if not styles.exists():
        raise FileNotFoundError(f"{styles} not found: point --data at the fashion-myntra folder")
    splits: dict[str, str] = {}
    split_file = root / "splits.csv"
    if split_file.exists():
        with open(split_file, newline="", encoding="utf-8") as f:
            splits = {r["id"].strip(): r["split"].strip() for r in csv.DictReader(f)}
    return ImportSource("fashion-myntra", str(styles), _rows(root, styles, splits), root, MIN_TAG_COUNT,
                        meta={"benchmark": "myntra-tags-v1", "text_version": TEXT_VERSION})
