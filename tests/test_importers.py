import csv
import gzip
import json

from conftest import write_jpeg, write_jsonl
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.importers import flipkart, generic, get_importer, hash_split, myntra, run_import


def _myntra_folder(tmp_path, n=22):
    root = tmp_path / "myntra"
    rows = []
    for i in range(n):
        rows.append({"id": 100 + i, "name": f"Roadster Men Blue Shirt {i}", "description": "Cotton shirt",
                     "articleType": "Shirts", "gender": "Men", "baseColour": "Blue" if i else "NA",
                     "season": "Fall", "usage": "Casual", "brand": "Roadster",
                     "materials_care": "100% cotton Machine wash" if i == 1 else "", "style_note": " Team it with jeans ",
                     "articleAttributes": {"Fabric": "Cotton ", "Wash Care": "Machine", "Fit": "Other",
                                           "Sleeve Length": "Long Sleeves" if i % 2 else "None"}})
    root.mkdir()
    with gzip.open(root / "styles.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(root / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split"])
        for i in range(n):
            w.writerow([100 + i, "test" if i == 0 else "train"])
    write_jpeg(root / "images" / "100.jpg")
    write_jpeg(root / "images" / "101.jpg")
    write_jpeg(root / "images-224" / "101.jpg", size=(224, 224))
    return root


def test_myntra_tags_follow_benchmark_rules(tmp_path):
    root = _myntra_folder(tmp_path)
    result = run_import(myntra.read(root), tmp_path / "out" / "catalog.jsonl")
    by_id = {p.id: p for p in result.products}
    # NA colour and 'Other'/'None' values are dropped, Wash Care is a skipped key, values stripped
    assert myntra.myntra_tags({"gender": "Men", "baseColour": "NA", "articleAttributes":
                               {"Fabric": "Cotton ", "Wash Care": "x", "Fit": "Other"}}) == ["fabric:cotton", "gender:men"]
    # sleeve length:long sleeves occurs 11 times among 21 train rows: under the 20 threshold
    assert result.vocab == ["colour:blue", "fabric:cotton", "gender:men", "season:fall", "usage:casual"]
    assert by_id["100"].tags == ["fabric:cotton", "gender:men", "season:fall", "usage:casual"]
    assert by_id["101"].extra["rare_tags"] == ["sleeve length:long sleeves"]
    assert by_id["100"].category == "Shirts" and by_id["100"].split == "test"
    assert by_id["101"].image == "images-224/101.jpg"  # the sharper copy is preferred
    assert by_id["100"].image == "images/100.jpg" and by_id["102"].image is None
    assert by_id["102"].extra["image_error"].startswith("no photo")
    # the shop's materials/care and style-note text is part of the product text, in that order
    assert by_id["101"].description == "Cotton shirt 100% cotton Machine wash Team it with jeans"
    assert by_id["100"].description == "Cotton shirt Team it with jeans"
    catalog = read_catalog(tmp_path / "out" / "catalog.jsonl")  # images resolve through the sidecar's root
    assert catalog.report.rejected == 0 and catalog.image_root == root.resolve()
    assert catalog.meta["tag_vocab"] == result.vocab
    assert catalog.meta["text_version"] == myntra.TEXT_VERSION  # the benchmark re-imports a stale catalog


def test_flipkart_specifications_and_category(tmp_path):
    root = tmp_path / "fk"
    write_jpeg(root / "images" / "a.jpg")
    spec = ('{"product_specification"=>[{"key"=>"Brand", "value"=>"Elegance"}, {"key"=>"Color", '
            '"value"=>"Multicolor"}, {"key"=>"Model ID", "value"=>"D25"}, {"value"=>"no key"}, '
            '{"key"=>"Type", "value"=>"NA"}]}')
    with open(root / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["uniq_id", "product_name", "product_category_tree", "description", "image",
                               "product_specifications", "brand"])
        w.writeheader()
        for i in range(6):
            w.writerow({"uniq_id": f"u{i}", "product_name": f"Curtain {i}", "description": "Polyester curtain",
                        "product_category_tree": '["Home Furnishing >> Curtains >> Door"]', "image": "a.jpg",
                        "product_specifications": spec, "brand": "Elegance"})
    assert flipkart.parse_specifications(spec)[:2] == [("Brand", "Elegance"), ("Color", "Multicolor")]
    assert flipkart.top_category('["Watches >> Wrist Watches"]') == "Watches"
    result = run_import(flipkart.read(root))
    p = result.products[0]
    assert p.category == "Home Furnishing" and p.image == "images/a.jpg" and p.image_hash
    assert p.tags == ["brand:elegance", "color:multicolor"]  # model id skipped, NA dropped
    assert p.split == hash_split("u0") and p.extra["brand"] == "Elegance"


def test_generic_importer_with_mapping_and_tag_columns(tmp_path):
    write_jpeg(tmp_path / "photos" / "1.jpg")
    src = write_jsonl(tmp_path / "export.jsonl", [
        {"sku": "A1", "name": "Red mug", "body": "Ceramic", "photo": "photos/1.jpg", "type": "Mug",
         "colour": "Red", "material": "Ceramic", "labels": "gift|kitchen", "price": 9.5},
        {"sku": "", "name": "no sku"},
        {"sku": "A2", "name": "Blue mug", "type": "Mug", "colour": "N/A", "labels": ["kitchen"]},
    ])
    source = get_importer("generic")(src, mapping="id=sku,title=name,description=body,image=photo,category=type,"
                                                  "tags=labels", tag_columns="colour,material",
                                     auto_split=False)  # no split: the vocabulary counts every product
    result = run_import(source, tmp_path / "catalog.parquet")
    a1, a2 = result.products
    assert (a1.id, a1.title, a1.description, a1.category) == ("A1", "Red mug", "Ceramic", "Mug")
    assert a1.tags == ["colour:red", "gift", "kitchen", "material:ceramic"] and a1.image_hash
    assert a1.extra == {"price": 9.5}
    assert a2.tags == ["kitchen"]  # N/A colour is no tag
    assert a1.split is None
    assert [i.row for i in result.report.issues] == [2]
    back = read_catalog(tmp_path / "catalog.parquet")
    assert [p.id for p in back.products] == ["A1", "A2"] and back.products[0].image_hash == a1.image_hash


def test_generic_mapping_errors_are_clear(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown catalog field 'titel'"):
        generic.parse_mapping("titel=name")
    with pytest.raises(ValueError, match="field=column"):
        generic.parse_mapping("title")
    with pytest.raises(KeyError, match="available"):
        get_importer("amazon")


def test_product1m_listings_names_brand_and_refusals(tmp_path):
    from multimodal_tags.data.importers import product1m

    root = tmp_path / "product1m-zh"
    root.mkdir()
    url = "http://x/1.jpg"
    (root / product1m.FILES[0]).write_text(
        f"11#####韩国AHC黄金套盒#####{url}#####{url}#####AHC 黄金面霜#;#AHC 黄金水#;#AHC 黄金面霜\n"
        "12#####only three#####fields\n"
        f"13#####兰蔻 水份缘三件套#####{url}#####{url}#####\n", encoding="utf-8")
    (root / product1m.FILES[1]).write_text(
        f"\n21#####SK-II 神仙水#####{url}#####{url}#####sk2 神仙水#;#sk2 大红瓶面霜#;#AHC 黄金水\n", encoding="utf-8")
    result = run_import(get_importer("product1m-zh")(root), tmp_path / "catalog.jsonl")
    products = {p.id: p for p in result.products}
    assert set(products) == {"11", "21"}
    assert sorted(products["11"].tags) == ["AHC 黄金水", "AHC 黄金面霜"] and products["11"].category == "AHC"
    assert products["21"].category == "sk2" and products["21"].language == "zh" and products["21"].image is None
    assert products["21"].extra["source"] == f"{product1m.FILES[1]}:2"
    issues = {str(i) for i in result.report.issues}
    assert issues == {f"{product1m.FILES[0]}:2: line: expected 5 fields separated by '#####', found 3 (row rejected)",
                      f"{product1m.FILES[0]}:3: names: no product names after the last '#####' (row rejected)"}
