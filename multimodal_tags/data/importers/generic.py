"""Importer for a user's own JSONL/CSV/Parquet export, with a column mapping.

    mapping = {"id": "sku", "title": "name", "description": "body", "image": "photo", "category": "type"}
    tag_columns = ["colour", "material"]   # each becomes a `column:value` tag
    tags_column = "labels"                 # an existing list / '|'-separated column of tags

Columns not mapped are kept in `extra`.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..readers import ROW_WARNINGS, iter_raw_rows
from ..validate import Issue, parse_tags, printable
from ..vocab import normalise_tag
from .base import ImportSource, RawRow, hash_split

CATALOG_FIELDS = ("id", "title", "description", "image", "category", "language", "split")


def parse_mapping(text: str) -> dict[str, str]:
    """'title=name,id=sku' -> {'title': 'name', 'id': 'sku'}; catalog fields on the left."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "=" not in part:
            raise ValueError(f"column mapping {part!r} must look like field=column")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in (*CATALOG_FIELDS, "tags"):
            raise ValueError(f"unknown catalog field {k!r} in mapping (fields: {', '.join(CATALOG_FIELDS)}, tags)")
        mapping[k] = v
    return mapping


def _rows(path: Path, mapping: dict[str, str], tag_columns: list[str], auto_split: bool) -> Iterator[RawRow]:
    used = set(mapping.values()) | set(tag_columns)
    for n, raw in iter_raw_rows(path):
        if isinstance(raw, Issue):
            yield n, raw
            continue
        row = {f: raw.get(mapping.get(f, f)) for f in CATALOG_FIELDS}
        if ROW_WARNINGS in raw:  # what the reader noticed (missing cells) reaches validation
            row[ROW_WARNINGS] = raw.pop(ROW_WARNINGS)
        tags_col = mapping.get("tags", "tags")
        try:
            tags = parse_tags(raw.get(tags_col))
        except ValueError as e:
            yield n, Issue(str(path), n, tags_col, str(e), raw=printable(json.dumps(raw, ensure_ascii=False,
                                                                                       default=str)))
            continue
        tags += [t for c in tag_columns if (t := normalise_tag(c, str(raw.get(c) or "")))]
        row["tags"] = tags
        row["extra"] = {k: v for k, v in raw.items() if k not in used and k not in CATALOG_FIELDS and v not in (None, "")}
        if auto_split and not row.get("split") and row.get("id") not in (None, ""):
            row["split"] = hash_split(str(row["id"]))
        yield n, row


def read(path: str | Path, mapping: dict[str, str] | str | None = None, tag_columns: list[str] | str = (),
         image_root: str | Path | None = None, min_tag_count: int = 1, auto_split: bool = True,
         **_: object) -> ImportSource:
    """A user's catalog file as an ImportSource; images resolve inside `image_root` (default: its folder)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if isinstance(mapping, str) or mapping is None:
        mapping = parse_mapping(mapping or "")
    if isinstance(tag_columns, str):
        tag_columns = [c.strip() for c in tag_columns.split(",") if c.strip()]
    root = Path(image_root) if image_root else path.resolve().parent
    return ImportSource("generic", str(path), _rows(path, mapping, list(tag_columns), auto_split), root,
                        min_tag_count, meta={"mapping": mapping, "tag_columns": list(tag_columns)})
