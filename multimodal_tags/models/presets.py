"""Named model configurations, listable, as open_clip's model configs are.

    tiny     random tiny encoders and a 1-layer GPT-2: tests, seconds on a CPU
    offline  the packaged MiniLM-L6 (+ a lexical branch) + EfficientNet-Lite0 and a GPT-2 trained from
             scratch: this machine
    full     BERT-base + CLIP ViT-B/32 + pretrained GPT-2 (open vocabulary): for users with those weights
"""
from __future__ import annotations

import copy
from collections.abc import Callable

from ..config import DecoderConfig, ModelConfig, WordScoreConfig
from .colour_descriptor import DIM as COLOUR_DIM

_PRESETS: dict[str, Callable[[], ModelConfig]] = {}


def register_preset(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    _PRESETS[fn.__name__] = fn
    return fn


@register_preset
def tiny() -> ModelConfig:
    return ModelConfig(text_encoder="tiny-bert", image_encoder="tiny-clip", text_dim=32, image_dim=32, dim=32,
                       lexical_buckets=1 << 10, lexical_dim=16,
                       word_scores=WordScoreConfig(enabled=True, categories=True, category_bias=1.0),
                       decoder=DecoderConfig(prefix_length=2, n_layer=1, n_embd=32, n_head=2, max_tags=8))


@register_preset
def offline() -> ModelConfig:
    # A small GPT-2 (3 layers, 192 wide): the closed tag vocabulary (~450 tokens) needs no more, and
    # it is cheap per step on a CPU. Light dropout. The exact words reach the model through word scores
    # (cross-fitted TF-IDF SVMs over 2^17 hashed words and bigrams, models/word_scores.py), one per tag
    # and one per category: they join the text features, x4 (with a learned per-tag correction) are
    # added to the decoder's tag logits and x2 to the category logits. No trained word table
    # (lexical_dim=0): it memorises the training texts, and the decoder learnt to trust it over the
    # honest, cross-fitted scores. Each choice was measured on Myntra val: docs/experiments.md.
    # Photos at 128 px (Myntra's are 60x80; 224, timm's default, cost 4x the pixels for the same test
    # F1) and 64 text tokens (the word scores read the whole text): docs/performance.md.
    # The photo speaks for itself where the words are silent (docs/implicit.md): a colour histogram of
    # the product's pixels beside the CNN vector, and a photo head whose per-tag logits reach the decoder.
    return ModelConfig(text_max_length=64, image_encoder="effnet-lite0+colour", image_dim=1280 + COLOUR_DIM,
                       image_size=128, photo_scores=True,
                       lexical_buckets=1 << 17, lexical_dim=0, dropout=0.05,
                       word_scores=WordScoreConfig(enabled=True, bias=4.0, per_tag=True, categories=True, category_bias=2.0),
                       decoder=DecoderConfig(n_layer=3, n_embd=192, n_head=4, dropout=0.0))


@register_preset
def full() -> ModelConfig:
    return ModelConfig(text_encoder="hf:bert-base-uncased", image_encoder="open_clip:ViT-B-32@openai",
                       text_dim=768, image_dim=512, dim=768, tag_decoder="open",
                       decoder=DecoderConfig(prefix_length=10, mapper="transformer", gpt2="gpt2"))


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> ModelConfig:
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return copy.deepcopy(_PRESETS[name]())
