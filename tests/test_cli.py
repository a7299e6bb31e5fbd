import json

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
    assert main(["demo", "--out", str(out), "--products", "60", "--text-encoder", "tiny-bert",
                 "--image-encoder", "tiny-clip", "--allow-random-weights", "--quiet"]) == 0
    log = capsys.readouterr().out
    assert "read 62 rows, kept 61, rejected 1" in log and "not-there.jpg" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"text", "image", "text+image"}
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
