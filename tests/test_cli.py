import json
from pathlib import Path

import pytest
import torch

from multimodal_tags.cli import main


def _features(catalog, cache, *extra):
    return main(["features", "--catalog", str(catalog), "--cache", str(cache), "--text-encoder", "tiny-bert",
                 "--image-encoder", "tiny-clip", "--allow-random-weights", "--quiet", "--workers", "0", *extra])


def test_features_twice_second_is_a_no_op(small_catalog, tmp_path, capsys):
    assert _features(small_catalog, tmp_path / "c") == 0
    first = capsys.readouterr().out
    assert "5 encoded" in first and "nothing to encode" not in first
    assert _features(small_catalog, tmp_path / "c") == 0
    second = capsys.readouterr().out
    assert "0 encoded" in second and "nothing to encode" in second
    assert main(["cache", "--cache", str(tmp_path / "c")]) == 0
    specs = [json.loads(l)["spec"] for l in capsys.readouterr().out.splitlines()]
    assert specs == ["tiny-bert", "tiny-clip"]


def test_random_weights_need_the_flag(small_catalog, tmp_path, capsys):
    code = main(["features", "--catalog", str(small_catalog), "--cache", str(tmp_path / "c"),
                 "--text-encoder", "tiny-bert", "--image-encoder", "none", "--quiet"])
    assert code == 1 and "random weights" in capsys.readouterr().err


def test_bad_arguments_give_messages_not_tracebacks(tmp_path, capsys):
    assert main(["features", "--catalog", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["import", "nosuch", "--data", str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "available" in capsys.readouterr().err
    bad = tmp_path / "c.txt"
    bad.write_text("x")
    assert main(["validate", "--catalog", str(bad)]) == 2
    assert "unknown catalog format" in capsys.readouterr().err


def test_encoders_listing(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    assert "minilm-l6" in out and "open_clip:" in out


def test_demo_end_to_end_with_tiny_encoders(tmp_path, capsys):
    out = tmp_path / "demo"
    recipe = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"  # what `make demo` reads
    assert main(["demo", "--config", str(recipe), "--out", str(out), "--products", "60",
                 "--text-encoder", "tiny-bert", "--image-encoder", "tiny-clip", "--allow-random-weights", "--quiet",
                 "--epochs", "2"]) == 0
    log = capsys.readouterr().out
    assert "read 62 rows, kept 61, rejected 1" in log and "not-there.jpg" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"text", "image", "text+image", "tagger, tags from head", "tagger, tags from decoder"}
    assert (out / "gallery.html").exists() and (out / "tags.db").exists() and (out / "tagger" / "model").is_dir()
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds and all({"id", "category", "tags", "tag_scores", "source"} <= set(p) for p in preds)
    run = json.loads((out / "run.json").read_text())
    assert run["versions"]["torch"] and run["settings"]["text_encoder"]["spec"] == "tiny-bert"
    assert (out / "report.md").read_text().startswith("# Demo run")


def test_import_cli_generic(tmp_path, capsys):
    src = tmp_path / "export.csv"
    src.write_text("sku,name,colour\nA,Red mug,red\nB,Blue mug,blue\n,No id,red\n")
    out = tmp_path / "catalog.jsonl"
    assert main(["import", "generic", "--data", str(src), "--out", str(out), "--map", "id=sku,title=name",
                 "--tag-columns", "colour"]) == 0
    log = capsys.readouterr()
    assert "read 3 rows, kept 2, rejected 1" in log.out and "export.csv:4: id" in log.err
    assert (tmp_path / "catalog.jsonl.rejects.jsonl").exists()


def test_presets_listing(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert {"tiny", "offline", "full"} <= {line.split()[0] for line in out.splitlines()}


def test_train_then_evaluate_cli(tmp_path, capsys):
    from conftest import synthetic_catalog

    synthetic_catalog(tmp_path, 60)
    (tmp_path / "recipe.yaml").write_text("preset: tiny\ntrain: {epochs: 2, batch_size: 16}\n")
    assert main(["train", "--catalog", str(tmp_path / "catalog.jsonl"), "--run-dir", str(tmp_path / "run"),
                 "--config", str(tmp_path / "recipe.yaml"), "--allow-random-weights",
                 "--lexical-buckets", "256"]) == 0  # a flag overrides the recipe
    assert "tags from decoder" in capsys.readouterr().out
    from multimodal_tags.train.recipe import load_recipe

    ran = load_recipe(tmp_path / "run" / "config.yaml")  # the run folder's record is a recipe too
    assert ran.train.epochs == 2 and ran.train.batch_size == 16 and ran.model.lexical_buckets == 256
    assert main(["evaluate", "--model", str(tmp_path / "run" / "model"), "--catalog", str(tmp_path / "catalog.jsonl"),
                 "--out", str(tmp_path / "eval"), "--split", "val", "--tag-source", "head",
                 "--allow-random-weights"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert 0 <= metrics["category_accuracy"] <= 1
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["model"]["lexical_buckets"] == 256
    # a model folder from another version is refused with a message, not a traceback
    cfg = tmp_path / "run" / "model" / "config.json"
    cfg.write_text(cfg.read_text().replace("mmtags-model/3", "mmtags-model/999"))
    assert main(["evaluate", "--model", str(tmp_path / "run" / "model"), "--catalog", str(tmp_path / "catalog.jsonl"),
                 "--out", str(tmp_path / "eval2"), "--allow-random-weights"]) == 1
    assert "mmtags-model/999" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_tagging_on_a_gpu_where_there_is_none_says_so(tmp_path, capsys):
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "1", "title": "red shirt"}\n')
    assert main(["tag", "--model", str(tmp_path / "model"), "--catalog", str(catalog), "--out",
                 str(tmp_path / "t.jsonl"), "--device", "cuda"]) == 2
    assert "no GPU is visible" in capsys.readouterr().err
