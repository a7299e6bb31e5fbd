"""Property tests of the readers and the validator: whatever the bytes, JSON values or CSV cells, reading
never raises (a bad row becomes an Issue), every row is counted once, and every valid row of a mixed
file is kept, in order."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multimodal_tags.data.catalog import ReadReport, iter_catalog
from multimodal_tags.data.validate import Issue, Limits, validate_row

# MMTAGS_EXAMPLES=2000 for a longer search than the suite's
SETTINGS = settings(max_examples=int(os.environ.get("MMTAGS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_IMAGES = Limits(check_images=False)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
garbage_lines = st.binary(max_size=80).filter(lambda b: b"\n" not in b and b"\r" not in b)


def _valid_row(i: int) -> dict:
    return {"id": f"valid-{i}", "title": f"Valid product {i}", "tags": ["colour:red"]}


def _read(data: bytes, suffix: str) -> tuple[list[str], ReadReport]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"catalog{suffix}"
        path.write_bytes(data)
        report = ReadReport(str(path))
        ids = [p.id for p in iter_catalog(path, limits=NO_IMAGES, report=report)]
        json.dumps([i.to_dict() for i in report.issues], ensure_ascii=False).encode("utf-8")  # writable as UTF-8
    return ids, report


def _accounted(ids: list[str], report: ReadReport) -> bool:
    return report.kept == len(ids) and report.read == report.kept + report.rejected


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_as_jsonl_never_raise(data):
    ids, report = _read(data, ".jsonl")
    assert _accounted(ids, report)


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_as_csv_never_raise(data):
    ids, report = _read(data, ".csv")
    assert _accounted(ids, report)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["id", "title", "description", "image", "category", "tags", "language",
                                        "split", "extra", "other"]) | st.text(max_size=6), json_values, max_size=8))
def test_arbitrary_json_values_give_a_product_or_issues(raw):
    product, issues = validate_row(raw, "f.jsonl", 1, None, NO_IMAGES)
    assert all(isinstance(i, Issue) for i in issues)
    assert (product is None) == any(i.severity == "error" for i in issues)
    if product is not None:
        json.dumps(product.to_dict(), ensure_ascii=False, default=str).encode("utf-8")


@SETTINGS
@given(st.lists(st.one_of(garbage_lines, st.integers(0, 0)), max_size=12))
def test_every_valid_row_of_a_mixed_jsonl_is_kept(lines):
    out, valid = [], []
    for n, line in enumerate(lines):
        if line == 0:  # a valid row here
            valid.append(_valid_row(n))
            out.append(json.dumps(valid[-1]).encode())
        else:
            out.append(line)
    ids, report = _read(b"\n".join(out) + b"\n", ".jsonl")
    assert [i for i in ids if i.startswith("valid-")] == [r["id"] for r in valid] and _accounted(ids, report)


cells = st.text(max_size=20)


@SETTINGS
@given(st.lists(st.one_of(st.lists(cells, min_size=1, max_size=6), st.integers(0, 0)), max_size=12))
def test_every_valid_row_among_arbitrary_csv_cells_is_kept(rows):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "title", "tags"])
    valid = []
    for n, row in enumerate(rows):
        if row == 0:
            valid.append(_valid_row(n))
            writer.writerow([valid[-1]["id"], valid[-1]["title"], "colour:red"])
        else:
            writer.writerow(row)
    ids, report = _read(buf.getvalue().encode("utf-8"), ".csv")
    assert [i for i in ids if i.startswith("valid-")] == [r["id"] for r in valid] and _accounted(ids, report)
