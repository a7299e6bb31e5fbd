"""Training and evaluation end to end on a small synthetic shop with tiny random encoders."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from multimodal_tags.config import TrainConfig
from conftest import synthetic_catalog
from multimodal_tags.models.presets import get_preset
from multimodal_tags.features import RunConfig
from multimodal_tags.train.job import train_tagger


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return synthetic_catalog(tmp_path_factory.mktemp("shop"), 120)


def _train(catalog, run_dir, **kw):
    tcfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, patience=10, seed=3)
    settings = RunConfig(cache_dir=kw.pop("cache_dir", None), allow_random_weights=True, log=lambda s: None)
    return train_tagger(catalog, run_dir, get_preset("tiny"), tcfg, settings, **kw)


def test_training_writes_a_complete_run_folder(shop, tmp_path):
    result = _train(shop, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "history.json", "metrics.json", "report.md", "curves.png",
                 "f1_by_key.png", "test_predictions.jsonl", "val_predictions_head.jsonl", "model/config.json",
                 "model/model.safetensors", "checkpoint/trainer_state.json"):
        assert (run / name).exists(), name
    assert set(result["metrics"]["test"]) == {"decoder", "head", "both"}
    row = json.loads((run / "test_predictions.jsonl").read_text().splitlines()[0])
    assert {"id", "category", "tags", "tag_scores", "tag_sources", "modality_weights", "content_hash"} <= set(row)
    # "both": the tag head agreed; "filled": a key every product carries, answered by the head
    assert set(row["tag_sources"].values()) <= {"decoder", "both", "filled"}
    assert json.loads((run / "run.json").read_text())["settings"]["seed"] == 3
    stages = json.loads((run / "run.json").read_text())["settings"]["stages"]
    assert stages == result["stages"] and {"features (text, photos, masked copies)", "word-score SVMs",
                                           "training epochs", "thresholds and evaluation"} <= set(stages)
    assert all(s >= 0 for s in stages.values())


def test_resume_after_interruption_gives_the_same_result(shop, tmp_path):
    straight = _train(shop, tmp_path / "straight")
    first = _train(shop, tmp_path / "resumed", stop_after_epoch=1)
    assert first["metrics"] is None and first["state"]["epoch"] == 1
    resumed = _train(shop, tmp_path / "resumed", resume=True)
    def without_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert without_time(resumed["state"]["history"]) == without_time(straight["state"]["history"])
    assert resumed["metrics"] == straight["metrics"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "multimodal_tags.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_two_process_training_and_evaluation_match_one_process(shop, tmp_path):
    trained = _launch(2, "train", "--catalog", str(shop), "--run-dir", str(tmp_path / "run2"), "--preset", "tiny",
                      "--allow-random-weights", "--epochs", "2", "--batch-size", "16")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = tmp_path / "run2" / "model"
    assert (model / "model.safetensors").exists()
    common = ["evaluate", "--model", str(model), "--catalog", str(shop), "--split", "all", "--allow-random-weights"]
    one = _launch(1, *common, "--out", str(tmp_path / "eval1"))
    two = _launch(2, *common, "--out", str(tmp_path / "eval2"))
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "eval1" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert m1 == m2 and m1["products"] == 120
    p1 = (tmp_path / "eval1" / "predictions.jsonl").read_text()
    assert p1 == (tmp_path / "eval2" / "predictions.jsonl").read_text()


def test_finetuned_text_encoder_path(shop, tmp_path):
    from multimodal_tags.models.factory import create_text_encoder
    from multimodal_tags.train.finetune_text import FinetuneConfig

    result = _train(shop, tmp_path / "ft", finetune=FinetuneConfig(max_length=16, batch_size=16, lr=1e-3))
    folder = tmp_path / "ft" / "text_encoder"
    tuned = create_text_encoder(f"hf:{folder}", max_length=16)
    base = create_text_encoder("tiny-bert", max_length=16)
    assert tuned.weights_id() != base.weights_id()  # it really trained, and got its own cache key
    assert not tuned.random_weights  # a fine-tuned folder is a pretrained encoder for the next run
    saved = json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    assert saved["model"]["text_encoder"] == "hf:./text_encoder" and saved["model"]["text_max_length"] == 16
    from multimodal_tags.models.tagger import Tagger

    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(tmp_path / "ft" / "model", moved)  # the folder is self-contained: it works when moved
    assert Tagger.load(moved).cfg.text_encoder == f"hf:{(moved / 'text_encoder').resolve()}"
    assert create_text_encoder(Tagger.load(moved).cfg.text_encoder).weights_id() == tuned.weights_id()
    assert result["metrics"]["test"]["head"]["products"] > 0
    assert (folder / "finetune_key.txt").exists()  # what it was fine-tuned on, for the reuse check
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))  # half the bytes on disk, float32 in use
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert {p.dtype for p in tuned.parameters()} == {torch.float32}


def test_a_finetuned_encoder_is_reused_only_for_the_same_texts_and_settings(shop):
    import dataclasses

    from multimodal_tags.data.catalog import read_catalog
    from multimodal_tags.train.finetune_text import FinetuneConfig
    from multimodal_tags.train.finetune_text import finetune_key

    train = [p for p in read_catalog(shop).products if p.split == "train"]
    ft = FinetuneConfig()
    key = finetune_key("tiny-bert", train, ft)
    assert finetune_key("tiny-bert", list(train), ft) == key
    edited = [dataclasses.replace(train[0], description=train[0].description + " silk"), *train[1:]]
    assert finetune_key("tiny-bert", edited, ft) != key
    assert finetune_key("tiny-bert", train, dataclasses.replace(ft, epochs=2)) != key
    assert finetune_key("minilm-l6", train, ft) != key


def test_cross_validation_experiment(shop, tmp_path):
    from experiments import cross_validation

    summary = cross_validation.main(["--catalog", str(shop), "--out", str(tmp_path / "cv"), "--folds", "3",
                                     "--preset", "tiny", "--epochs", "1", "--batch-size", "16",
                                     "--allow-random-weights"])
    assert set(summary) == {"decoder", "head", "both"}
    folds = json.loads((tmp_path / "cv" / "cv.json").read_text())["folds"]
    assert len(folds) == 3
    sizes = [folds[f]["head"]["products"] for f in range(3)]
    assert sum(sizes) == 108  # every train+val product is scored exactly once (12 of 120 are test)


def test_augmented_views_are_cached_and_drawn_in_training(shop, tmp_path):
    from multimodal_tags.data.feature_cache import FeatureCache

    tcfg = TrainConfig(epochs=1, batch_size=16, text_views=2, image_views=1, feature_noise=0.05)
    run = tmp_path / "aug"
    train_tagger(shop, run, get_preset("tiny"), tcfg,
                 RunConfig(cache_dir=tmp_path / "cache", allow_random_weights=True, log=lambda s: None))
    with FeatureCache(tmp_path / "cache") as cache:
        counts = {e["key"].split(":")[-1]: e["vectors"] for e in cache.encoders() if ":" in e["key"]}
    n_train = sum(1 for line in shop.read_text().splitlines() if '"split": "train"' in line)
    assert set(counts) == {"text-aug0", "text-aug1", "image-aug0"}
    assert 0 < counts["image-aug0"] <= n_train and 0 < counts["text-aug0"] <= n_train  # train products only


def test_augmentations_are_seeded():
    from PIL import Image

    from multimodal_tags.data.augment import augment_image, augment_text

    text = "Blue striped cotton shirt with long sleeves for men"
    assert augment_text(text, 1) == augment_text(text, 1)
    assert {augment_text(text, s) for s in range(10)} - {text}
    assert set(augment_text("蓝色条纹棉质衬衫", 3)) <= set("蓝色条纹棉质衬衫")
    im = Image.new("RGB", (40, 30), "red")
    im.paste(Image.new("RGB", (10, 30), "blue"), (0, 0))
    a, b = augment_image(im, 5), augment_image(im, 5)
    assert a.size == im.size and a.tobytes() == b.tobytes()
    assert any(augment_image(im, s).tobytes() != im.tobytes() for s in range(5))


def test_training_depends_on_the_seed_alone(shop, tmp_path):
    import torch

    first = _train(shop, tmp_path / "a")
    torch.rand(1000)  # whatever ran before must not change the initial weights
    second = _train(shop, tmp_path / "b")
    assert first["metrics"] == second["metrics"]


def test_linear_baseline_experiment(shop, tmp_path):
    from experiments import linear_baseline

    report = linear_baseline.main(["--catalog", str(shop), "--out", str(tmp_path / "lin"), "--buckets", "4096"])
    rows = [json.loads(line) for line in (tmp_path / "lin" / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == report["products"] == 12
    # the synthetic shop names its colour and category in the title: a linear model on words gets most of it
    assert report["category_accuracy"] >= 0.5 and report["tags_micro_f1"] >= 0.5
