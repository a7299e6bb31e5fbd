"""Encoders through torch.compile (models/compiled.py): the same vectors as eager for every batch shape,
eager where compiling fails or drifts, and only for jobs large enough to pay for it under `auto`."""
import functools
import json

import pytest
import torch

from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features.encode import EncodeStats, encode_text_items
from multimodal_tags.features.settings import RunConfig
from multimodal_tags.models import compiled
from multimodal_tags.models.compiled import CompiledInference, resolve_compile
from multimodal_tags.models.factory import create_image_encoder, create_text_encoder


@functools.cache
def _inductor_works() -> bool:
    """Whether torch.compile builds CPU kernels here (it writes C++: no compiler or headers, no kernels)."""
    try:
        return bool(torch.compile(lambda x: x + 1)(torch.ones(2)).eq(2).all())
    except Exception:  # noqa: BLE001 - any failure means: not on this machine
        return False


@pytest.fixture
def inductor():
    if not _inductor_works():
        pytest.skip("torch.compile cannot build CPU kernels here; the encoders run eagerly (tested below)")


TEXTS = ["red cotton shirt", "a much longer text about a blue ceramic mug with a handle and a lid", "蓝色马克杯",
         "navy checked casual shirt for men", "white sneakers", "a black leather wallet with six card slots",
         "green tea", "printed kurta"]


def test_auto_compiles_only_cpu_jobs_large_enough_to_pay_for_it():
    assert resolve_compile("on", 1) and not resolve_compile("off", 10 ** 9)
    assert resolve_compile("auto", compiled.COMPILE_MIN_ITEMS) and not resolve_compile("auto", 100)
    assert not resolve_compile("auto", 10 ** 9, "cuda")  # not measured on a GPU yet
    with pytest.raises(ValueError, match="sometimes"):
        resolve_compile("sometimes", 1)


def test_compiled_text_encoder_gives_eager_vectors_for_every_batch_size_and_length(inductor):
    eager = create_text_encoder("tiny-bert").set_precision("fp32")
    fast = create_text_encoder("tiny-bert").set_precision("fp32").set_compile("on")
    fast.load_state_dict(eager.state_dict())
    fast.expect(1)
    for batch in (TEXTS[:3], TEXTS, TEXTS[3:4], TEXTS * 9):  # a graph for 64 rows: padded, or 72 cut to 64 + 8
        torch.testing.assert_close(fast.encode(batch).pooled, eager.encode(batch).pooled, rtol=1e-4, atol=1e-5)
    assert fast._compiled.graph is not None and fast._compiled.size == 64  # compiled and used, not refused
    with torch.no_grad():
        with fast.eager():  # comparisons (throughput.py's stock path) run eagerly, and the graph is kept
            assert fast.compiled_runner() is None
        assert fast.compiled_runner() is fast._compiled
    assert fast.encode(TEXTS[:2], return_tokens=True).tokens is not None  # token states: eager, as before
    fast.train()
    assert fast._compiled is None  # weights may change: the frozen graph is dropped


def test_compiled_cnn_in_bf16_keeps_its_vectors_and_fp32_keeps_the_folded_trunk(inductor):
    encoder = create_image_encoder("timm:resnet10t@random+colour").set_precision("bf16").set_compile("on").eval()
    pixels = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        reference = encoder.embed(pixels).pooled
        encoder.expect(1)
        encoder.embed(pixels[:2])  # compiled for batches of 64, these 2 rows padded
        vectors = encoder.embed(pixels).pooled
    assert encoder._compiled.graph is not None and encoder.base._compiled.graph is not None  # histogram and CNN
    assert torch.nn.functional.cosine_similarity(vectors, reference).min() > 0.99
    torch.testing.assert_close(vectors[:, -512:], reference[:, -512:])  # the histogram: the same values
    fp32 = create_image_encoder("timm:resnet10t@random").set_precision("fp32").set_compile("on")
    fp32.expect(10 ** 6)
    assert fp32._compiled is None  # fp32: the eagerly folded trunk measured faster


def test_a_graph_that_fails_to_compile_or_drifts_leaves_the_encoder_eager(monkeypatch, capsys):
    def fn(x):
        return x * 2.0

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nmore")
    monkeypatch.setattr(torch, "compile", broken)
    runner = CompiledInference(fn, "demo-encoder")
    x = torch.randn(4, 3)
    torch.testing.assert_close(runner(x), fn(x))
    torch.testing.assert_close(runner(x[:1]), fn(x[:1]))
    assert runner.failed and "demo-encoder: running eagerly: it did not compile (RuntimeError: no C++ compiler)" \
        in capsys.readouterr().out

    monkeypatch.setattr(torch, "compile", lambda f, **kw: (lambda x: -f(x)))  # a "graph" that computes otherwise
    drifting = CompiledInference(fn, "demo-encoder")
    torch.testing.assert_close(drifting(x), fn(x))
    assert drifting.failed and "vectors differ from eager ones" in capsys.readouterr().out


def test_auto_compiles_a_feature_job_of_many_texts_and_not_a_small_one(tmp_path, monkeypatch, inductor):
    encoder = create_text_encoder("tiny-bert").set_precision("fp32").set_compile("auto")
    items = {f"h{i}": t for i, t in enumerate(TEXTS)}
    with FeatureCache(tmp_path / "cache") as cache:
        encode_text_items(dict(list(items.items())[:2]), encoder, cache, "k", EncodeStats("text", "tiny"),
                          progress=False)
        assert encoder._compiled is None  # 2 texts: compiling would cost more than it saves
        monkeypatch.setattr(compiled, "COMPILE_MIN_ITEMS", 4)
        encode_text_items(items, encoder, cache, "k", EncodeStats("text", "tiny"), progress=False)
        assert encoder._compiled is not None and encoder._compiled.graph is not None


def test_tagging_a_large_catalog_compiles_under_auto(tmp_path, monkeypatch):
    from multimodal_tags.tagging.tag_job import _compile_for

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps({"id": str(i), "title": "x"}) + "\n" for i in range(5)), encoding="utf-8")
    assert _compile_for(RunConfig(), catalog).compile == "auto"  # 5 rows: each batch decides, and none compiles
    monkeypatch.setattr(compiled, "COMPILE_MIN_ITEMS", 5)
    assert _compile_for(RunConfig(), catalog).compile == "on"  # the whole catalog's size decides
    assert _compile_for(RunConfig(compile="off"), catalog).compile == "off"
