"""Catalog files -> raw rows: one reading path for JSONL (optionally gzipped), CSV and Parquet.

A reader never stops at a bad row: it yields (row number, dict) for a row it could read and
(row number, Issue) for one it could not, and goes on with the next. Only a file that cannot be
read at all raises, and then a CatalogError that names it. Rows keep their original text in the
Issue (undecodable bytes written as `\\xNN`), so they can be fixed and re-imported.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import json
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .validate import Issue, printable

# A broken CSV quote can make one "field" the rest of the file; the reader reports and recovers
# from that itself, so the csv module must not abort on the long field first.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

RawRow = tuple[int, "dict[str, Any] | Issue"]
# Key under which a reader hands validation the warnings of a row it kept (e.g. missing CSV cells).
ROW_WARNINGS = "\0row_warnings"
FORMATS = ((".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".csv.gz", "csv"),
           (".parquet", "parquet"))


class CatalogError(ValueError):
    """A catalog file that cannot be read at all (missing, a folder, an unknown format, unreadable)."""


def catalog_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in FORMATS:
        if name.endswith(suffix):
            return fmt
    raise CatalogError(f"{path}: unknown catalog format (use .jsonl, .jsonl.gz, .csv, .csv.gz or .parquet)")


def check_catalog_file(path: Path) -> None:
    """Raise CatalogError unless `path` is an existing file of a known format."""
    catalog_format(path)
    if not path.exists():
        raise CatalogError(f"{path}: no such catalog file")
    if not path.is_file():
        raise CatalogError(f"{path} is a {'folder' if path.is_dir() else 'special file'}, not a catalog file")


def iter_raw_rows(path: Path) -> Iterator[RawRow]:
    """(row number, raw dict or Issue) for every non-blank row of a catalog file."""
    path = Path(path)
    check_catalog_file(path)
    return {"jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet}[catalog_format(path)](path)


def _jsonl_row(path: Path, n: int, line: bytes) -> dict[str, Any] | Issue:
    raw_text = printable(line.decode("utf-8", errors="surrogateescape").rstrip("\r\n"))
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Issue(str(path), n, "row", f"not valid UTF-8 (byte 0x{line[e.start]:02x} at offset {e.start})",
                     raw=raw_text)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Issue(str(path), n, "row", f"bad JSON: {e.msg} at column {e.colno}", raw=raw_text)
    if not isinstance(obj, dict):
        return Issue(str(path), n, "row", f"expected a JSON object, got {type(obj).__name__}", raw=raw_text)
    return obj


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if n == 1 and line.startswith(codecs.BOM_UTF8):  # Windows tools write one
                    line = line[len(codecs.BOM_UTF8):]
                if line.strip():
                    yield n, _jsonl_row(path, n, line)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        # a truncated or corrupt gzip: the rows read so far stand; the rest cannot be reached
        yield n + 1, Issue(str(path), n + 1, "file", f"the compressed file is truncated or corrupt after row {n} "
                                                     f"({type(e).__name__}: {e}); the rows after it cannot be read")


class _Lines:
    """The physical lines of a text file, remembering those of the record being parsed."""

    def __init__(self, lines):
        self.lines, self.record, self.line_num = iter(lines), [], 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.line_num += 1
        self.record.append(line)
        return line


def _csv_records(lines: _Lines, path: Path) -> Iterator[tuple[int, list[str] | Issue]]:
    """(first line, cells) per CSV record; a record the csv module cannot parse (an unterminated or
    stray quote) becomes an Issue, and parsing starts again on the line after its first."""
    while True:
        reader = csv.reader(lines, strict=True)
        try:
            for cells in reader:
                start = lines.line_num - len(lines.record) + 1
                lines.record = []
                yield start, cells
            return
        except csv.Error as e:
            bad, start = lines.record, lines.line_num - len(lines.record) + 1
            yield start, Issue(str(path), start, "row", f"CSV cannot be parsed ({e}): a quote is not closed "
                                                        f"where it should be; the row is skipped and reading goes "
                                                        f"on at line {start + 1}", raw=printable(bad[0].rstrip("\r\n")))
            rest = _Lines(bad[1:] + list(lines.lines))
            rest.line_num = start
            lines = rest


def _iter_csv(path: Path) -> Iterator[RawRow]:
    # utf-8-sig drops Excel's byte-order mark; surrogateescape keeps undecodable bytes for validation,
    # which names the field
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        header = None
        for n, cells in _csv_records(_Lines(f), path):
            if isinstance(cells, Issue):
                yield n, cells
            elif header is None:
                header = cells
            elif cells:  # a blank line is no row
                yield n, _csv_row(path, n, header, cells)


def _csv_row(path: Path, n: int, header: list[str], cells: list[str]) -> dict[str, Any] | Issue:
    if len(cells) > len(header):
        return Issue(str(path), n, "row", f"{len(cells) - len(header)} more cells than header columns",
                     raw=printable(json.dumps(cells, ensure_ascii=False)))
    row: dict[str, Any] = dict(zip(header, cells))
    if len(cells) < len(header):
        missing = header[len(cells):]
        row.update(dict.fromkeys(missing, ""))
        row[ROW_WARNINGS] = [("row", f"{len(cells)} cells, the header has {len(header)}: "
                                     f"{', '.join(missing)} read as empty")]
    return row


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowException, OSError) as e:
        raise CatalogError(f"{path} cannot be read as Parquet ({type(e).__name__}: {e})") from None
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield n, row
