"""The same jobs on a CUDA GPU: training through accelerate (bf16), evaluation on the GPU, tagging.
Skipped where no GPU is visible (CI, the 2-core machine); run on a GPU machine with
`python -m pytest tests/test_cuda.py`."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import synthetic_catalog
from multimodal_tags.config import TrainConfig
from multimodal_tags.eval.evaluate import evaluate_model
from multimodal_tags.features import RunConfig
from multimodal_tags.models.presets import get_preset
from multimodal_tags.tagging.tag_job import tag_catalog
from multimodal_tags.train.job import train_tagger

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_train_evaluate_and_tag_on_cuda(tmp_path):
    catalog = synthetic_catalog(tmp_path, 240)
    settings = RunConfig(cache_dir=tmp_path / "cache", allow_random_weights=True, progress=False,
                           log=lambda s: None)
    result = train_tagger(catalog, tmp_path / "run", get_preset("tiny"), TrainConfig(epochs=3, batch_size=32, lr=3e-3),
                          settings)
    trained = result["metrics"]["test"]["decoder"]
    assert all(math.isfinite(h["train_total_loss"]) for h in result["state"]["history"])
    metrics = evaluate_model(tmp_path / "run" / "model", catalog, tmp_path / "eval", "test", settings=settings)
    # the same model, scored on the GPU instead of the CPU: the same products, nearly the same numbers
    assert abs(metrics["category_accuracy"] - trained["category_accuracy"]) <= 0.05
    stats = tag_catalog(tmp_path / "run" / "model", catalog, tmp_path / "tagged.jsonl", tmp_path / "tags.db", settings)
    rows = [json.loads(line) for line in (tmp_path / "tagged.jsonl").read_text().splitlines()]
    assert stats.tagged == len(rows) == stats.kept > 0


def test_lm_decoder_trains_whole_and_generates_on_cuda():
    """The LM decoder's GPU path (`--decoder-finetune full`, bf16 autocast) on a tiny Llama."""
    pytest.importorskip("peft")
    from multimodal_tags.train.fit_lm_decoder import fit_lm_decoder
    from test_lm_decoder import TAGS, _decoder

    dec, data = _decoder("tiny-llama", finetune="full")
    dec.cfg.precision, dec.cfg.epochs = "auto", 3
    fit = fit_lm_decoder(dec, data, data, log=lambda s: None, device="cuda")
    assert all(math.isfinite(e["train_loss"]) for e in fit["epochs"])
    tags = dec.generate(data.fused, data.titles, data.descriptions)  # fused on the CPU: moved to the decoder
    assert all({t for t, _ in g} <= set(TAGS) for g in tags)
