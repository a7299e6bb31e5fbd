"""Typed configuration for the tagger and its training, with YAML in and out.

Every knob lives here with the reason it exists; presets (models/presets.py) are named instances.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml


# how TagDecoder.generate runs (models/static_decode.py): finished rows leave the batch, a pre-allocated
# KV cache at fixed shapes, or that with CUDA graphs
DECODING_MODES = ("dynamic", "static", "graphs")
# the SVMs that score val, test and new products (TrainConfig.word_score_final)
WORD_SCORE_FINALS = ("refit", "average")
# whether the encoders' inference runs through torch.compile (models/compiled.py): auto (jobs of many
# products on a CPU), on or off
COMPILE_MODES = ("auto", "on", "off")
# what a masked copy's text is silent about (TrainConfig.masked_view, data/masking.label_word_view)
MASKED_VIEWS = ("own", "key")


@dataclass
class DecoderConfig:
    """The GPT-2 tag decoder (models/decoder.py)."""

    prefix_length: int = 4  # k prefix embeddings handed to GPT-2
    mapper: str = "mlp"  # "mlp" or "transformer"
    gpt2: str = "scratch"  # "scratch" (trained from a config), or a hub name / local folder of pretrained GPT-2
    n_layer: int = 4  # scratch GPT-2 size
    n_embd: int = 256
    n_head: int = 4
    max_tags: int = 24  # longest tag sequence generated
    dropout: float = 0.1


@dataclass
class LMDecoderConfig:
    """A pretrained causal LM as the tag decoder (models/lm_decoder.py), trained on a tagger's frozen fused
    vectors (train/fit_lm_decoder.py), as ClipCap trains its mapper on frozen CLIP vectors."""

    backend: str = "smollm2-135m"  # models/causal_lm.py: smollm2-135m, hf:NAME_OR_FOLDER, tiny-llama, tiny-gpt2
    prefix_length: int = 8  # k prefix embeddings from the fused vector, in front of the title prompt
    finetune: str = "lora"  # "lora": adapters on every linear layer, the LM frozen; "full": the whole LM (a GPU)
    lora_r: int = 8
    lora_alpha: int = 16
    lr: float = 1e-3  # LoRA adapters (and the whole LM under "full", at a tenth of it)
    mapper_lr: float = 1e-3  # the mapper, trained from scratch
    epochs: int = 1
    batch_size: int = 32
    max_prompt_tokens: int = 24  # the title is cut to this many tokens
    # the description's first tokens follow the title (0: title only): where a catalog states what a key's
    # value is ("round neck t-shirt with short sleeves"); 24 costs about a quarter more training time than 0
    description_tokens: int = 24
    max_value_tokens: int = 8  # an asked key's value (free text) is at most this long
    # share of train products that also teach asking: the prompt, ` key:` for one of its keys, its value
    # (`mmtags tag --ask-keys` prompts the same way); 0: the LM only ever writes whole tag lists
    ask_practice: float = 0.0
    max_tags: int = 24  # longest tag list generated
    # shallow fusion with the tagger's heads at decoding: each allowed token's log-probability gains
    # prior_weight x the log of the heads' probability of where it leads (TrieWalk.allowed_with_prior);
    # 0: the LM alone. Tuned on validation products by experiments/llm_decoder.py --prior-weights
    prior_weight: float = 0.0
    precision: str = "auto"  # "auto": bf16 where the device runs it natively (models/encoder_base.py)
    seed: int = 0


@dataclass
class WordScoreConfig:
    """Stacked TF-IDF linear SVM scores (models/word_scores.py; they read the lexical branch's words)."""

    enabled: bool = False  # one SVM per tag: its scores join the text features
    bias: float = 1.0  # x the tag scores, added to the decoder's tag logits
    per_tag: bool = False  # learn a per-tag correction of `bias`: bias x (1 + delta_tag), delta weight-decayed to 0
    # one SVM per category too (one-vs-rest): scores join the text features, and `category_bias` x them is
    # added to the category logits (0: features only)
    categories: bool = False
    category_bias: float = 0.0


@dataclass
class ModelConfig:
    text_encoder: str = "minilm-l6"  # spec (see models/factory.py); "none" for image-only
    image_encoder: str = "effnet-lite0"  # spec; "none" for text-only
    text_dim: int = 384  # width of the text encoder's pooled vector
    text_max_length: int = 128  # tokens per product text seen by the text encoder (part of the cache key)
    image_dim: int = 1280  # width of the image encoder's pooled vector
    # photo side in pixels the image encoder sees (None: its default, 224 for EfficientNet-Lite0); part of
    # the cache key. Myntra's photos are 60x80: docs/performance.md measures tag F1 and speed per size.
    image_size: int | None = None
    lexical_buckets: int = 0  # >0: add a trained hashed word/bigram branch to the text side (see models/lexical.py)
    lexical_dim: int = 128  # width of that branch's vector
    word_scores: WordScoreConfig = field(default_factory=WordScoreConfig)  # needs lexical_buckets > 0
    # a photo head (models/heads.py PhotoHead): tag and category logits from the photo vector alone, trained
    # on their own loss and added, x a learned weight per tag / category, to the decoder's tag logits and
    # the category logits, so the photo's evidence reaches each tag directly when the words are silent
    photo_scores: bool = False
    fusion: str = "gated"  # "concat" (baseline) or "gated" (exposes per-product modality weights)
    dim: int = 512  # fused vector width
    dropout: float = 0.1  # inside fusion and heads
    modality_dropout: float = 0.15  # share of products that lose text or photo in training: robust to either missing
    label_smoothing: float = 0.1  # category cross-entropy; softens over-confident rare classes
    tag_loss: str = "bce"  # "bce", "asymmetric" (many easy negatives) or "focal"
    use_decoder: bool = True  # train the GPT-2 tag decoder next to the tag head
    tag_decoder: str = "closed"  # "closed": one token per tag; "open": BPE text, can emit unseen tags
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    adversary_field: str | None = None  # Product.extra field to make the fused vector invariant to (e.g. "shop")
    price_field: str | None = None  # Product.extra numeric field regressed with MSE (log1p), if any


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    # sparse word tables (the lexical branch): each row trains only when its word occurs, so it needs a
    # larger step than the dense weights (docs/experiments.md)
    embedding_lr: float = 1e-2
    weight_decay: float = 0.01  # AdamW decoupled L2
    # learning rates of parameters by name prefix ({"category_head.": 1e-3}); the rest use `lr`
    lr_by_prefix: dict[str, float] | None = None
    l1: float = 0.0  # L1 on head weights: sparse, interpretable tag/category weights
    scheduler: str = "cosine"  # "cosine", "linear" or "constant", after warmup
    warmup_ratio: float = 0.05
    grad_accum: int = 1  # effective batch = batch_size * grad_accum * processes
    mixed_precision: str = "auto"  # accelerate's "no", "bf16", "fp16"; "auto": bf16 where the hardware has it
    patience: int = 5  # early stopping: epochs without val improvement
    monitor: str = "val_score"  # mean of category accuracy and tag micro-F1 on val
    seed: int = 0
    category_weight: float = 1.0
    tag_weight: float = 1.0
    decoder_weight: float = 1.0
    adversary_weight: float = 0.1
    price_weight: float = 0.1
    photo_weight: float = 1.0  # the photo head's loss (ModelConfig.photo_scores)
    # within it, x the softmax cross-entropy over each single-valued key's values (heads.single_value_loss)
    photo_value_weight: float = 1.0
    # the photo head's own layers' learning rate (None: `lr`). It is a stacked probe of a fixed vector, cut off
    # from the decoder's gradient: at 1e-2 the photo reads colour best (photo-only colour F1 0.618 -> 0.643 on
    # Myntra), and the decoder then trusts it too far on full texts (micro-F1 -0.002): docs/implicit.md
    photo_lr: float | None = None
    feature_noise: float = 0.0  # augmentation on cached features: Gaussian noise, relative to feature scale
    text_views: int = 0  # augmented views per train text (word dropout/swaps), encoded once and cached
    image_views: int = 0  # augmented views per train photo (crop, flip, jitter), encoded once and cached
    # share of train products that get one extra copy whose text is silent about some of their own labels
    # (train/masked_copies.py): the model learns to find in the photo what the words no longer say
    masked_copies: float = 0.0
    # what a copy's text is silent about (data/masking.label_word_view): "own", the words of the product's own
    # values of the chosen keys; "key", every word of every value of those keys in the train split
    masked_view: str = "own"
    word_score_folds: int = 5  # cross-fitting folds of the word-score SVMs (ModelConfig.word_scores)
    # their regularisation (LinearSVC C); `experiments/linear_baseline.py --c` compares values (docs/experiments.md)
    word_score_c: float = 2.0
    # liblinear's stopping tolerance for them (LinearSVC's default 1e-4; liblinear's own is 0.1, about
    # 1.5x faster: docs/performance.md, "one liblinear problem per fold")
    word_score_tol: float = 1e-4
    # the SVMs that score val, test and new products: "refit" on the whole train split, or "average" of
    # the folds' SVMs (one fit fewer; models/word_scores.cross_fitted_scores). On Myntra, 3 folds averaged
    # took 200 s instead of 343 s and cost 0.0025 of test micro-F1 (docs/performance.md)
    word_score_final: str = "refit"
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    max_train_products: int | None = None  # quick runs


_NESTED = {"decoder": DecoderConfig, "word_scores": WordScoreConfig}
# the flat ModelConfig fields of model folders saved before WordScoreConfig -> its fields
_FLAT_WORD_SCORES = {"word_score_bias": "bias", "word_score_per_tag": "per_tag", "word_score_categories": "categories",
                     "category_score_bias": "category_bias"}


def _nest_word_scores(d: dict[str, Any]) -> dict[str, Any]:
    """A ModelConfig dict with the word-score fields in one `word_scores` section (older files had them flat)."""
    if isinstance(d.get("word_scores", {}), dict) and not set(_FLAT_WORD_SCORES) & set(d):
        return d
    d = dict(d)
    flag = d.pop("word_scores", False)
    section = dict(flag) if isinstance(flag, dict) else {"enabled": bool(flag)}
    section |= {new: d.pop(old) for old, new in _FLAT_WORD_SCORES.items() if old in d}
    return d | {"word_scores": section}


def dataclass_from_dict(cls, d: dict[str, Any]):
    """`cls` (a config dataclass) from a dict: nested sections become their own configs, unknown fields are
    refused by name."""
    return _from_dict(cls, d)


def _from_dict(cls, d: dict[str, Any]):
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if f.name in _NESTED and isinstance(v, dict):
            v = _from_dict(_NESTED[f.name], v)
        kwargs[f.name] = v
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return cls(**kwargs)


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from its dict (config.json, YAML), unknown fields refused."""
    return _from_dict(ModelConfig, _nest_word_scores(d))


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    return _from_dict(TrainConfig, d)


def to_dict(cfg) -> dict[str, Any]:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def save_yaml(path: str | Path, **sections) -> None:
    Path(path).write_text(yaml.safe_dump({k: to_dict(v) for k, v in sections.items()}, sort_keys=False),
                          encoding="utf-8")
