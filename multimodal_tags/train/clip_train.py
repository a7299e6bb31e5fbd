"""Train our CLIP (models/product_clip.py) on a catalog's photo-text pairs with open_clip's `ClipLoss`.

Locked-image tuning (LiT) first: both pretrained towers stay frozen and only the two projections and
the temperature train, on cached tower outputs (the photos' EfficientNet-Lite0 vectors come from the
feature cache, shared with the `effnet-lite0` encoder; the captions' MiniLM vectors are cached too),
so an epoch over 35k pairs takes seconds. Optionally the last layers of the text tower and the last
stages of the image trunk are tuned too (`unlock_text_layers`, `unlock_image_stages`;
train/clip_image_side.py). Each photo is paired with its product name and, optionally, two phrases built from its
tags ("white, printed, summer" and "white colour, printed pattern, summer season"); tag keys named in
`holdout_keys` never appear in a caption (open-vocabulary evaluation). The checkpoint with the best
validation score (mean of zero-shot category accuracy, zero-shot colour accuracy where the catalog
has `colour:` tags, and text->image recall@10) is saved. `image_size` trains the image tower at another
photo side than the config's (saved with the model, used when it is loaded).
"""
from __future__ import annotations

import copy
import hashlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.catalog import Catalog
from ..data.feature_cache import FeatureCache
from ..data.schema import Product
from ..features.encode import EncodeStats, encode_and_load, encode_text_items, register
from ..metrics import retrieval_recall
from ..models import product_clip as pc
from ..models.tag_tokenizer import tag_key
from ..models.text_encoders import packaged_minilm_dir
from ..models.zero_shot import TEMPLATES, tag_prompts
from .clip_image_side import ImageSide


@dataclass
class ClipTrainConfig:
    config: str = pc.DEFAULT_CONFIG  # open_clip model config (models/clip_configs/)
    epochs: int = 8
    batch_size: int = 1024  # contrastive: more negatives per step
    lr: float = 1e-3
    weight_decay: float = 0.5  # the MLP projections over-fit 35k names quickly
    # pair photos with tag phrases too, not only the product name (measured on Myntra val: names alone
    # gave better zero-shot category accuracy and retrieval; docs/clip.md)
    attribute_captions: bool = False
    holdout_keys: tuple[str, ...] = ()  # tag keys kept out of every caption
    unlock_text_layers: int = 0  # >0: also tune the last N layers of the text tower
    unlock_image_stages: int = 0  # >0: also tune the last N stages of the EfficientNet trunk (+ conv_head)
    tower_lr: float = 5e-5  # learning rate of unlocked tower layers
    image_size: int | None = None  # photo side for the image tower (None: the config's, 224)
    seed: int = 0
    text_folder: str | None = None  # the text tower's BERT folder (None: the packaged MiniLM-L6)
    trunk_weights: dict | None = field(default=None, repr=False)  # image trunk weights (None: EfficientNet-Lite0)


def product_captions(p: Product, attribute_captions: bool = True, holdout_keys: Sequence[str] = ()) -> list[str]:
    """The texts paired with a product's photo: its name, then its tags as two phrases."""
    pairs = [t.partition(":") for t in p.tags]
    kv = [(k, v) for k, sep, v in pairs if sep and k not in holdout_keys]
    captions = [p.title]
    if attribute_captions and kv:
        captions += [", ".join(v for _, v in kv), ", ".join(f"{v} {k}" for k, v in kv)]
    return captions


def _text_key(text: str) -> str:
    return hashlib.sha256(f"clip-caption|{text}".encode()).hexdigest()


@dataclass
class PairFeatures:
    """Tower outputs of one split: photo trunk vectors, caption vectors, and which captions each photo has."""

    products: list[Product]
    image: torch.Tensor  # [n, trunk dim] trunk vectors, or [n, C, H, W] maps when the trunk's tail is unlocked
    text: torch.Tensor  # [captions, text dim], cached text-tower vectors (stale once the tower is unlocked)
    captions: list[list[int]]  # per product, rows of `text`; the first is the name
    texts: list[str] = field(default_factory=list)  # the captions themselves, row by row


def split_products(catalog: Catalog, split: str) -> list[Product]:
    return [p for p in catalog.products if p.split == split and p.image and p.image_hash]


def text_vectors(texts: Sequence[str], trunk: pc.ClipTextTrunk, cache: FeatureCache) -> torch.Tensor:
    """Pooled text-tower vectors of `texts` (cached under the text trunk's key)."""
    items = {_text_key(t): t for t in texts}
    key = register(cache, trunk)
    encode_text_items(items, trunk, cache, key, EncodeStats("text", trunk.spec), batch_size=256, progress=False)
    vectors, found = cache.get(key, [_text_key(t) for t in texts])
    assert found.all(), "every caption was just encoded"
    return torch.from_numpy(vectors)


def _photo_inputs(products: list[Product], encoder: pc.ProductClipEncoder, image_side: ImageSide,
                  cache: FeatureCache, image_root: Path) -> tuple[torch.Tensor, np.ndarray]:
    """(what the image side starts from: trunk vectors, or the unlocked tail's input maps; rows kept)."""
    image_trunk = encoder.trunk_encoder()
    if image_side.stages:
        maps, ok = image_side.maps(products, encoder.transform, image_root, cache.folder, image_trunk.cache_key(),
                                   encoder.autocast)
        return maps, np.nonzero(ok)[0]
    feats = encode_and_load(products, cache, image_root, image_encoder=image_trunk)
    keep = np.nonzero(feats["has_image"])[0]
    return torch.from_numpy(feats["image"][keep]), keep


def pair_features(products: list[Product], encoder: pc.ProductClipEncoder, trunk: pc.ClipTextTrunk,
                  cache: FeatureCache, image_root: Path, cfg: ClipTrainConfig,
                  image_side: ImageSide | None = None) -> PairFeatures:
    """Encode (or fetch) the photo inputs and caption vectors of the products; drops failed photos."""
    image, keep = _photo_inputs(products, encoder, image_side or ImageSide(encoder.clip.visual.trunk), cache, image_root)
    products = [products[i] for i in keep]
    captions = [product_captions(p, cfg.attribute_captions, cfg.holdout_keys) for p in products]
    texts = list(dict.fromkeys(t for c in captions for t in c))
    row = {t: i for i, t in enumerate(texts)}
    return PairFeatures(products, image, text_vectors(texts, trunk, cache), [[row[t] for t in c] for c in captions],
                        texts)


def project_text(clip, text_trunk_vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(clip.text.proj(text_trunk_vectors), dim=-1)


def project_image(clip, image_trunk_vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(clip.visual.head(image_trunk_vectors), dim=-1)


def class_vectors(clip, prompt_vectors: torch.Tensor, n_templates: int) -> torch.Tensor:
    """Prompt-ensemble class vectors from the trunk vectors of [classes x templates] prompts."""
    per_prompt = project_text(clip, prompt_vectors).view(-1, n_templates, clip.text.output_dim)
    return torch.nn.functional.normalize(per_prompt.mean(1), dim=-1)


class TextSide:
    """Text-tower vectors of captions: the cached ones while the tower is locked, recomputed (with
    gradients when training) once its last layers are unlocked."""

    def __init__(self, trunk: pc.ClipTextTrunk, unlocked: bool):
        self.trunk, self.unlocked = trunk, unlocked

    def vectors(self, cached: torch.Tensor, texts: Sequence[str], rows: Sequence[int], grad: bool = False,
                chunk: int = 1024) -> torch.Tensor:
        if not self.unlocked:
            return cached[rows]
        out = []
        for s in range(0, len(rows), chunk):
            tokens = self.trunk.tokenizer([texts[i] for i in rows[s:s + chunk]]).to(self.trunk.device)
            with torch.set_grad_enabled(grad), self.trunk.autocast():
                out.append(self.trunk.pooled(tokens).float())
        return torch.cat(out)


@dataclass
class Prompts:
    """Zero-shot class prompts: [classes x templates] texts and their cached text-tower vectors. The
    classes are categories, or the `key:value` tags of one tag `key`."""

    classes: list[str]
    texts: list[str]
    vectors: torch.Tensor
    key: str | None = None

    def gold(self, p: Product) -> int:
        """The product's class index (-1: none of these classes)."""
        label = p.category if self.key is None else next((t for t in p.tags if tag_key(t) == self.key), None)
        return self.classes.index(label) if label in self.classes else -1

    def accuracy(self, clip, text_side: "TextSide", img: torch.Tensor, products: list[Product]) -> float:
        """Zero-shot accuracy over the products that have one of the classes."""
        cls = class_vectors(clip, text_side.vectors(self.vectors, self.texts, list(range(len(self.texts)))),
                            len(TEMPLATES))
        gold = np.array([self.gold(p) for p in products])
        pred = (img @ cls.T).argmax(1).numpy()
        return float((pred == gold)[gold >= 0].mean())


@torch.no_grad()
def validate(clip, val: PairFeatures, prompts: Prompts, text_side: TextSide, image_side: ImageSide,
             colours: Prompts | None = None) -> dict:
    """Zero-shot category (and colour) accuracy and name<->photo retrieval on held-out pairs; the
    selection score is their mean."""
    clip.eval()
    img = project_image(clip, image_side.vectors(val.image, list(range(len(val.products)))))
    names = project_text(clip, text_side.vectors(val.text, val.texts, [c[0] for c in val.captions]))
    t2i = retrieval_recall((names @ img.T).numpy())
    i2t = retrieval_recall((img @ names.T).numpy())
    out = {"zero_shot_category_acc": prompts.accuracy(clip, text_side, img, val.products), "t2i_r1": t2i[1],
           "t2i_r10": t2i[10], "i2t_r1": i2t[1], "i2t_r10": i2t[10]}
    if colours is not None:
        out["zero_shot_colour_acc"] = colours.accuracy(clip, text_side, img, val.products)
    scored = [v for k, v in out.items() if k.startswith("zero_shot")] + [t2i[10]]
    return {**out, "score": float(np.mean(scored))}


def _sample_captions(captions: list[list[int]], rng: np.random.Generator) -> np.ndarray:
    """One caption per photo: the name half of the time, else one of its tag phrases."""
    out = np.empty(len(captions), dtype=np.int64)
    for i, c in enumerate(captions):
        out[i] = c[0] if len(c) == 1 or rng.random() < 0.5 else c[rng.integers(1, len(c))]
    return out


def lock_text_tower(clip, unlocked_layers: int) -> None:
    """Freeze the BERT text tower but its last `unlocked_layers` layers (open_clip's own
    `lock_text_tower` has no layer table for BERT models)."""
    transformer = clip.text.transformer
    for p in transformer.parameters():
        p.requires_grad = False
    for layer in (transformer.encoder.layer[-unlocked_layers:] if unlocked_layers else []):
        for p in layer.parameters():
            p.requires_grad = True


def _optimizer(clip, cfg: ClipTrainConfig, image_side: ImageSide) -> torch.optim.Optimizer:
    """Projections at `lr`, unlocked tower layers at `tower_lr`, the temperature without decay."""
    lock_text_tower(clip, cfg.unlock_text_layers)
    tower = [p for p in clip.text.transformer.parameters() if p.requires_grad] + image_side.parameters()
    params = [*clip.visual.head.parameters(), *clip.text.proj.parameters()]
    groups = [{"params": params, "weight_decay": cfg.weight_decay},
              {"params": [clip.logit_scale], "weight_decay": 0.0}]
    if tower:
        groups.append({"params": tower, "weight_decay": cfg.weight_decay, "lr": cfg.tower_lr})
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train_projections(clip, train: PairFeatures, val: PairFeatures, prompts: Prompts, text_side: TextSide,
                      cfg: ClipTrainConfig, log: Callable[[str], None], image_side: ImageSide | None = None,
                      colours: Prompts | None = None) -> list:
    """Train the projections and the temperature (and unlocked tower layers) with open_clip's ClipLoss;
    keeps the best epoch by validation score."""
    import open_clip

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    image_side = image_side or ImageSide(clip.visual.trunk)
    opt = _optimizer(clip, cfg, image_side)
    steps = cfg.epochs * math.ceil(len(train.products) / cfg.batch_size)
    warmup = max(1, steps // 20)  # 5% linear warm-up, then cosine decay
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))))
    loss_fn, history, best = open_clip.ClipLoss(), [], (-1.0, None)
    for epoch in range(cfg.epochs):
        clip.train()
        caption = _sample_captions(train.captions, rng)
        order, losses = torch.randperm(len(train.products)), []
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            text = text_side.vectors(train.text, train.texts, caption[idx].tolist(), grad=True)
            image = image_side.vectors(train.image, idx.tolist(), grad=True)
            loss = loss_fn(project_image(clip, image), project_text(clip, text), clip.logit_scale.exp())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
        metrics = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
                   **validate(clip, val, prompts, text_side, image_side, colours)}
        history.append(metrics)
        log(f"clip epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.3f}, val zero-shot category "
            f"{metrics['zero_shot_category_acc']:.4f}, colour {metrics.get('zero_shot_colour_acc', float('nan')):.4f}"
            f", t2i R@10 {metrics['t2i_r10']:.4f}")
        if metrics["score"] > best[0]:
            best = (metrics["score"], copy.deepcopy(clip.state_dict()))
    clip.load_state_dict(best[1])
    return history


def class_prompts(classes: list[str], trunk: pc.ClipTextTrunk, cache: FeatureCache, key: str | None = None) -> Prompts:
    """Prompt ensembles of categories (key None) or of one key's `key:value` tags."""
    texts = [p for c in classes for p in tag_prompts(c)]
    return Prompts(classes, texts, text_vectors(texts, trunk, cache), key)


def _key_tags(products: list[Product], key: str) -> list[str]:
    return sorted({t for p in products for t in p.tags if tag_key(t) == key})


def train_clip(catalog: Catalog, out_dir: str | Path, cache_dir: str | Path, cfg: ClipTrainConfig | None = None,
               precision: str = "auto", log: Callable[[str], None] = print) -> Path:
    """Train a locked-tower CLIP on the catalog's train pairs, select on val, save to OUT/model."""
    cfg = cfg or ClipTrainConfig()
    start = time.perf_counter()
    text_folder = Path(cfg.text_folder) if cfg.text_folder else packaged_minilm_dir()
    clip = pc.build_clip(cfg.config, text_folder, cfg.trunk_weights, cfg.image_size)
    tokenizer = pc.clip_tokenizer(text_folder, pc.model_config(cfg.config)["text_cfg"].get("context_length", 32))
    trunk_spec = ("effnet-lite0" if cfg.trunk_weights is None else f"{cfg.config}-trunk") + \
        ("-tuned" if cfg.unlock_image_stages else "")  # a name only: the cache key has the weights' hash
    encoder = pc.ProductClipEncoder(f"{pc.SPEC_PREFIX}training", clip, tokenizer, {"trunk_spec": trunk_spec})
    encoder.set_precision(precision)
    image_side = ImageSide(clip.visual.trunk, cfg.unlock_image_stages, encoder.autocast)
    text_trunk = pc.ClipTextTrunk(clip, tokenizer).set_precision(precision)
    train_products = split_products(catalog, "train")
    categories = sorted({p.category for p in train_products if p.category})
    with FeatureCache(cache_dir) as cache:
        train, val = (pair_features(products, encoder, text_trunk, cache, catalog.image_root, cfg, image_side)
                      for products in (train_products, split_products(catalog, "val")))
        prompts = class_prompts(categories, text_trunk, cache)
        colour_tags = _key_tags(train_products, "colour")
        colours = class_prompts(colour_tags, text_trunk, cache, "colour") if colour_tags else None
    features_s = time.perf_counter() - start
    log(f"clip features: {len(train.products)} train and {len(val.products)} val pairs, {len(train.text)} "
        f"captions, {features_s:.0f}s")
    history = train_projections(clip, train, val, prompts, TextSide(text_trunk, cfg.unlock_text_layers > 0), cfg, log,
                                image_side, colours)
    best = max(history, key=lambda m: m["score"])
    text_tower = f"last {cfg.unlock_text_layers} layers tuned" if cfg.unlock_text_layers else "locked"
    image_tower = f"last {cfg.unlock_image_stages} stages + conv_head tuned" if cfg.unlock_image_stages else "locked"
    meta = {"trunk_spec": trunk_spec, "image_tower": image_tower, "text_tower": text_tower,
            "train": {**{k: v for k, v in asdict(cfg).items() if k != "trunk_weights"},
                      "pairs": len(train.products), "captions": len(train.text),
                      "catalog": {k: catalog.meta.get(k) for k in ("source", "benchmark", "text_version")},
                      "seconds_features": round(features_s, 1),
                      "seconds_total": round(time.perf_counter() - start, 1), "cpu": platform.processor() or
                      platform.machine(), "threads": torch.get_num_threads(), "precision": encoder.precision},
            "val": best, "history": history}
    return pc.save_clip(clip, Path(out_dir) / "model", cfg.config, text_folder, meta)
