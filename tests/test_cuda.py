"""The same jobs on a CUDA GPU: training through accelerate (bf16), evaluation on the GPU, tagging, the
decoder's CUDA graphs and throughput.py's GPU path.
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


def test_cuda_graph_decoding_gives_the_dynamic_loops_tags():
    """The GPU decoding path (models/static_decode.py): a StaticCache and CUDA graphs, in float32."""
    from test_tagger import TRAIN_TAGS, VOCAB, batch, shrink

    from multimodal_tags.models.tagger import Tagger, build_tokenizer

    cfg = shrink(get_preset("offline"))
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    torch.manual_seed(0)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok).cuda().eval()
    with torch.no_grad():
        out = model(batch(cfg=cfg, tokenizer=tok).to("cuda"))
        dynamic = model.decoder.generate(out["fused"], tag_bias=out["tag_bias"])
        model.decoder.set_decoding("graphs")
        for _ in range(3):  # captured once, replayed after
            graphs = model.decoder.generate(out["fused"], tag_bias=out["tag_bias"])
            assert [[t for t, _ in g] for g in graphs] == [[t for t, _ in g] for g in dynamic]
        small = model.decoder.generate(out["fused"][:2], tag_bias=out["tag_bias"][:2])  # padded to the captured size
    assert [[t for t, _ in g] for g in small] == [[t for t, _ in g] for g in dynamic[:2]]


def test_throughput_runs_the_gpu_path(tmp_path):
    from experiments import throughput

    catalog = synthetic_catalog(tmp_path, 60)
    r = throughput.main(["--catalog", str(catalog), "--out", str(tmp_path / "out"), "--preset", "tiny",
                         "--allow-random-weights", "--products", "24", "--naive-products", "2", "--batch", "8",
                         "--large-photos", "0", "--device", "cuda"])
    assert r["decoding"] == "graphs" and r["project_per_s"] > 0 and r["device"] != "cpu"
