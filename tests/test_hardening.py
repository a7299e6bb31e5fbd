"""Bad input, as a new user brings it: every case gets a message naming the file, row and field, every
good row is kept, and no command prints a traceback. One test per reported bug, one per settled rule."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_jpeg, write_jsonl
from multimodal_tags.cli import main
from multimodal_tags.data.catalog import iter_catalog, read_catalog, write_rejects
from multimodal_tags.data.images import MAX_IMAGE_BYTES, ImageError, check_image
from multimodal_tags.data.readers import CatalogError

REPO = Path(__file__).resolve().parent.parent
HEADER = b"id,title,description,category\n"


def _ids(path: Path) -> list[str]:
    return [p.id for p in read_catalog(path).products]


# ---- bug 2: one latin-1 byte in a CSV ---------------------------------------------------------------
def test_a_latin1_byte_rejects_its_row_only_and_the_rejects_file_is_written(tmp_path, capsys):
    csv_path = tmp_path / "shop.csv"
    csv_path.write_bytes(HEADER + b"p1,Caf\xe9 mug,white mug,Mug\np2,Tea cup,blue cup,Mug\n")
    catalog = read_catalog(csv_path)
    assert [p.id for p in catalog.products] == ["p2"]
    issue = catalog.report.issues[0]
    assert (issue.row, issue.field) == (2, "title") and "0xe9" in issue.reason
    write_rejects(catalog.report.issues, tmp_path / "rejects.jsonl")  # used to fail: surrogates are not UTF-8
    [reject] = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "Caf\\xe9 mug" in reject["raw"]  # the byte stays visible
    assert main(["validate", "--catalog", str(csv_path), "--no-image-check"]) == 0
    assert main(["import", "generic", "--data", str(csv_path), "--out", str(tmp_path / "c.jsonl")]) == 0
    assert _ids(tmp_path / "c.jsonl") == ["p2"]
    assert "Traceback" not in capsys.readouterr().err


def test_an_undecodable_unknown_column_is_named(tmp_path):
    csv_path = tmp_path / "shop.csv"
    csv_path.write_bytes(b"id,title,notes\np1,Mug,caf\xe9\np2,Cup,fine\n")
    catalog = read_catalog(csv_path)
    assert _ids(csv_path) == ["p2"]
    assert "notes" in catalog.report.issues[0].reason and "0xe9" in catalog.report.issues[0].reason


# ---- bug 3: a PNG decompression bomb; and a huge file ----------------------------------------------
def test_a_decompression_bomb_is_an_image_error_and_the_product_stays_text_only(tmp_path, capsys):
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 M pixels in a small file
    with pytest.raises(ImageError, match="pixels"):
        check_image("bomb.png", tmp_path)
    cat = write_jsonl(tmp_path / "c.jsonl", [{"id": "b", "title": "Bomb mug", "image": "bomb.png"}])
    [product] = read_catalog(cat).products
    assert product.image is None and product.extra["image_ref"] == "bomb.png"
    assert main(["validate", "--catalog", str(cat)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_huge_photo_file_is_refused_before_it_is_read(tmp_path):
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: nothing is read if the size is checked first
    with pytest.raises(ImageError, match="bytes, over"):
        check_image("huge.jpg", tmp_path)


# ---- bug 6: byte-order marks ------------------------------------------------------------------------
def test_a_csv_with_a_byte_order_mark_keeps_every_row(tmp_path):
    csv_path = tmp_path / "excel.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + HEADER + b"p1,Mug,white,Mug\np2,Cup,blue,Mug\n")
    assert _ids(csv_path) == ["p1", "p2"]


def test_a_jsonl_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": "p1", "title": "Mug"}\n{"id": "p2", "title": "Cup"}\n')
    assert _ids(path) == ["p1", "p2"]


# ---- bug 7: an unterminated quote ------------------------------------------------------------------
def test_an_unterminated_quote_rejects_its_row_and_the_rest_is_read(tmp_path):
    csv_path = tmp_path / "quote.csv"
    csv_path.write_bytes(HEADER + b'p1,"Mug,white,Mug\np2,Cup,blue,Mug\np3,Cap,red,Hat\n')
    catalog = read_catalog(csv_path)
    assert [p.id for p in catalog.products] == ["p2", "p3"]
    assert catalog.report.rejected == 1
    issue = catalog.report.issues[0]
    assert issue.row == 2 and "quote" in issue.reason and issue.raw.startswith('p1,"Mug')


def test_a_stray_quote_mid_file_rejects_only_its_row(tmp_path):
    csv_path = tmp_path / "quote.csv"
    csv_path.write_bytes(HEADER + b'p1,"Mug,white,Mug\np2,"Cup" x,blue,Mug\np3,Cap,red,Hat\n')
    assert "p3" in _ids(csv_path)


# ---- bug 8: an interrupted set-up ------------------------------------------------------------------
def test_make_remakes_a_half_made_venv(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # python there, pip not: an interrupted set-up
    (venv / "bin" / "python").chmod(0o755)
    fake = tmp_path / "fake-python"  # "python -m venv DIR" makes a venv whose python logs what it is asked
    fake.write_text('#!/bin/sh\nmkdir -p "$3/bin"\nprintf \'#!/bin/sh\\necho "$@" >> "$(dirname "$0")/calls"\\n\' '
                    '> "$3/bin/python"\nchmod +x "$3/bin/python"\n')
    fake.chmod(0o755)
    res = subprocess.run(["make", "setup", f"PYTHON={fake}"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    calls = (venv / "bin" / "calls").read_text()
    assert "-m pip install" in calls and (venv / ".installed-test").exists()


# ---- bug 9: tracebacks instead of messages ---------------------------------------------------------
def test_a_folder_given_as_the_catalog(tmp_path, capsys):
    folder = tmp_path / "shop.jsonl"
    folder.mkdir()
    with pytest.raises(CatalogError, match="folder"):
        list(iter_catalog(folder))
    assert main(["validate", "--catalog", str(folder)]) == 2
    assert "not a catalog file" in capsys.readouterr().err


def test_a_truncated_or_false_gzip_keeps_the_rows_before_the_damage(tmp_path, capsys):
    rows = b"".join(json.dumps({"id": f"p{i}", "title": f"Mug {i}"}).encode() + b"\n" for i in range(2000))
    whole = gzip.compress(rows)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    catalog = read_catalog(tmp_path / "cut.jsonl.gz")
    assert 0 < len(catalog.products) < 2000 and catalog.report.issues[-1].field == "file"
    (tmp_path / "plain.jsonl.gz").write_bytes(rows)  # not gzip at all
    assert main(["validate", "--catalog", str(tmp_path / "plain.jsonl.gz")]) == 1
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err


def test_a_gallery_of_predictions_whose_tags_are_not_a_list(tmp_path, capsys):
    write_jpeg(tmp_path / "a.jpg")
    cat = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "title": f"Mug {i}", "image": "a.jpg", "tags": ["colour:red"]}
                                            for i in ("1", "2", "3")])
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "1", "category": "Mug", "tags": {"colour:red": 1}},
                                               {"id": "2", "category": "Mug", "tags": 7},
                                               {"id": "3", "category": "Mug", "tags": ["colour:red"]}])
    assert main(["gallery", "--predictions", str(preds), "--catalog", str(cat), "--out", str(tmp_path / "g.html")]) == 0
    out, err = capsys.readouterr()
    assert "(1 products)" in out and "p.jsonl:1: tags must be a list" in err and "p.jsonl:2:" in err


# ---- weaker spots, each with its rule ---------------------------------------------------------------
@pytest.mark.parametrize("pid, ok", [(1.5, False), (float("nan"), False), (float("inf"), False), (12.0, True),
                                     (12, True), ("x" * 10_000, False), ("sku\u200b1", False),
                                     ("sku\u202e1", False), ("sku-1", True)])
def test_the_id_rule(tmp_path, pid, ok):
    """Ids are text or whole numbers, at most 256 characters, with no invisible or control characters."""
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": pid, "title": "Mug"}) + "\n")
    catalog = read_catalog(path)
    assert bool(catalog.products) == ok
    if not ok:
        assert catalog.report.issues[0].field == "id"


def test_a_huge_unknown_column_rejects_the_row(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "title": "Mug", "notes": "x" * 5_000_000},
                                              {"id": "b", "title": "Cup", "notes": "short"}])
    catalog = read_catalog(path)
    assert [p.id for p in catalog.products] == ["b"] and catalog.products[0].extra["notes"] == "short"
    assert catalog.report.issues[0].field == "row" and "max_row_chars" in catalog.report.issues[0].reason


def test_a_short_csv_row_is_kept_with_a_warning(tmp_path):
    csv_path = tmp_path / "short.csv"
    csv_path.write_bytes(HEADER + b"p1,Mug\n")
    catalog = read_catalog(csv_path)
    assert _ids(csv_path) == ["p1"]
    [issue] = catalog.report.issues
    assert issue.severity == "warning" and "description, category" in issue.reason


def test_parquet_tags_that_are_numbers_are_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "title": ["Mug", "Cup"], "tags": [[1, 2], [3]]}), tmp_path / "c.parquet")
    catalog = read_catalog(tmp_path / "c.parquet")
    assert not catalog.products and "must be text" in catalog.report.issues[0].reason


def test_an_empty_catalog_fails_every_command_alike(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["validate", "--catalog", str(empty)]) == 1
    assert main(["import", "generic", "--data", str(empty), "--out", str(tmp_path / "c.jsonl")]) == 1
    assert not (tmp_path / "c.jsonl").exists()
    assert capsys.readouterr().err.count("no valid products") == 2


def test_tag_on_a_missing_catalog_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["tag", "--model", str(tmp_path), "--catalog", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "no such catalog" in capsys.readouterr().err
    assert not out.exists() and not Path(f"{out}.rejects.jsonl").exists()


def test_a_lone_surrogate_escape_is_refused_naming_the_field(tmp_path):
    from multimodal_tags.data.catalog import read_catalog

    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "title": "ok"}\n{"id": "\\ud800", "title": "x"}\n{"id": "b", "title": "t\\udfff"}\n')
    catalog = read_catalog(path)
    assert [p.id for p in catalog.products] == ["a"]
    assert {(i.row, i.field) for i in catalog.report.issues} == {(2, "id"), (3, "title")}
    assert "lone surrogate U+D800" in catalog.report.issues[0].reason


def test_a_gzipped_csv_catalog_reads_and_writes(tmp_path):
    from multimodal_tags.data.catalog import read_catalog, write_catalog

    path = tmp_path / "c.csv.gz"
    write_catalog(read_catalog(write_jsonl_rows(tmp_path)).products, path)
    assert [p.title for p in read_catalog(path).products] == ["Red mug", "Blue lamp"]


def write_jsonl_rows(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "title": "Red mug"}\n{"id": "2", "title": "Blue lamp"}\n')
    return path


def test_a_large_jpeg_is_checked_in_draft_mode_and_damage_is_still_caught():
    import io

    from PIL import Image

    from multimodal_tags.data.images import CHECK_SIDE, ImageError, decode_image

    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), (20, 120, 200)).save(buf, "JPEG", quality=90)
    small = decode_image(buf.getvalue(), "p", min_side=CHECK_SIDE)
    assert min(small.size) >= CHECK_SIDE and small.size[0] < 3000  # decoded at a fraction of the size
    with pytest.raises(ImageError, match="truncated"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], "p", min_side=CHECK_SIDE)
