import json

import pytest

from conftest import write_jpeg, write_jsonl
from multimodal_tags.data.catalog import iter_catalog, read_catalog, write_catalog
from multimodal_tags.data.schema import Product
from multimodal_tags.data.validate import Limits


def _broken_catalog(tmp_path):
    """Every kind of bad row the foundation issue lists, between good rows."""
    shop = tmp_path / "shop"
    write_jpeg(shop / "ok.jpg")
    (shop / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + b"\x00" * 100)
    write_jpeg(tmp_path / "outside.jpg")  # exists, but outside the catalog folder
    rows = [
        {"id": "good-1", "title": "Red shirt", "image": "ok.jpg", "category": "Shirts", "tags": ["colour:red"]},
        b'{"id": "bad-json", "title": "oops"\n',
        {"title": "no id here"},
        b'{"id": "bad-utf8", "title": "caf\xe9 mug"}\n',
        {"id": "corrupt-jpeg", "title": "Blue mug", "image": "corrupt.jpg"},
        {"id": "missing-image", "title": "Green cap", "image": "nowhere.jpg"},
        {"id": "escape", "title": "Sneaky", "image": "../outside.jpg"},
        {"id": "remote", "title": "Far away", "image": "http://example.com/x.jpg"},
        {"id": "huge", "title": "Long one", "description": "x" * (10 * 1024 * 1024)},
        {"id": "good-1", "title": "Duplicate of the first"},
        {"id": "good-2", "title": "中文标题 蓝色马克杯", "tags": "colour:blue|material:ceramic"},
    ]
    return write_jsonl(shop / "catalog.jsonl", rows)


def test_broken_rows_are_reported_and_good_rows_kept(tmp_path):
    catalog = read_catalog(_broken_catalog(tmp_path))
    kept = {p.id: p for p in catalog.products}
    # photo problems keep the product, text-only, with the original reference saved
    assert set(kept) == {"good-1", "good-2", "corrupt-jpeg", "missing-image", "escape", "remote"}
    for pid in ("corrupt-jpeg", "missing-image", "escape", "remote"):
        assert kept[pid].image is None and kept[pid].extra["image_ref"]
    assert kept["good-1"].image == "ok.jpg" and kept["good-1"].image_hash
    assert kept["good-2"].language == "zh" and kept["good-2"].tags == ["colour:blue", "material:ceramic"]
    r = catalog.report
    assert (r.read, r.kept, r.rejected) == (11, 6, 5)
    by_row = {i.row: i for i in r.issues}
    assert "bad JSON" in by_row[2].reason and by_row[2].field == "row"
    assert by_row[3].field == "id" and "missing" in by_row[3].reason
    assert "UTF-8" in by_row[4].reason and "0xe9" in by_row[4].reason
    assert "cannot be decoded" in by_row[5].reason and by_row[5].severity == "warning"
    assert "not found" in by_row[6].reason
    assert "outside the catalog" in by_row[7].reason
    assert "remote image reference" in by_row[8].reason
    assert by_row[9].field == "description" and "10,485,760" in by_row[9].reason
    assert "duplicate id" in by_row[10].reason and "row 1" in by_row[10].reason
    rejected = [i for i in r.issues if i.severity == "error"]
    assert all(i.raw for i in rejected)  # the original row travels with the issue
    assert all(str(i).startswith(str(catalog.report.file)) for i in r.issues)


def test_strict_images_rejects_instead(tmp_path):
    catalog = read_catalog(_broken_catalog(tmp_path), limits=Limits(strict_images=True))
    assert {p.id for p in catalog.products} == {"good-1", "good-2"}


def test_csv_non_utf8_field_named(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,title,description\n1,Good,fine\n2,Bad \xff title,fine\n3,Also good,\n")
    catalog = read_catalog(path)
    assert [p.id for p in catalog.products] == ["1", "3"]
    (issue,) = catalog.report.issues
    assert (issue.row, issue.field) == (3, "title") and "0xff" in issue.reason


@pytest.mark.parametrize("ext", ["jsonl", "jsonl.gz", "csv", "parquet"])
def test_round_trip_every_format(tmp_path, ext):
    write_jpeg(tmp_path / "a.jpg")
    products = [
        Product(id="1", title="Red shirt", description="cotton, \"quoted\"\nnew line", image="a.jpg",
                category="Shirts", tags=["colour:red", "material:cotton"], split="train", extra={"brand": "X"}),
        Product(id="2", title="蓝色马克杯", tags=[], split="test"),
    ]
    for p in products[:1]:
        p.image_hash = read_catalog(write_jsonl(tmp_path / "seed.jsonl", [p.to_dict()])).products[0].image_hash
    path = tmp_path / f"out.{ext}"
    write_catalog(products, path, meta={"source": "test"})
    back = read_catalog(path)
    assert back.report.rejected == 0
    assert [p.to_dict() for p in back.products] == [p.to_dict() for p in products]
    assert back.meta["source"] == "test" and back.meta["products"] == 2


def test_iter_catalog_streams(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": str(i), "title": f"t{i}"} for i in range(5)])
    it = iter_catalog(path)
    assert next(it).id == "0"  # a generator: rows are validated as they are read


def test_unknown_columns_kept_in_extra(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "title": "t", "price": 12.5, "brand": "B"}])
    (p,) = read_catalog(path).products
    assert p.extra == {"price": 12.5, "brand": "B"}


def test_cli_validate_writes_rejects(tmp_path, capsys):
    from multimodal_tags.cli import main

    path = _broken_catalog(tmp_path)
    assert main(["validate", "--catalog", str(path)]) == 0
    out = capsys.readouterr()
    assert "read 11 rows, kept 6, rejected 5" in out.out
    rejects = [json.loads(l) for l in open(f"{path}.rejects.jsonl", encoding="utf-8")]
    assert len(rejects) == 9 and {r["severity"] for r in rejects} == {"error", "warning"}
    assert any(r["row"] == 2 and '"bad-json"' in r["raw"] for r in rejects)


def test_empty_and_all_bad_catalogs(tmp_path, capsys):
    from multimodal_tags.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert read_catalog(empty).products == []
    bad = write_jsonl(tmp_path / "bad.jsonl", [b"not json\n", {"title": "no id"}])
    assert main(["validate", "--catalog", str(bad)]) == 1
    assert "kept 0, rejected 2" in capsys.readouterr().out
