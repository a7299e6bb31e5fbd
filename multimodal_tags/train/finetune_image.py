"""Tune the last stages of the image trunk on the category and tag losses (the photo branch's slow path).

An ImageNet CNN, frozen, carries shape well and a product's colour and garment details less so. Tuning
its last stages on the shop's own labels makes the photo vector carry them. On a CPU the whole trunk is
too slow to tune, so the trunk is split before its last `stages` stages (train/clip_image_side.py): the
frozen part runs once per train photo (its feature maps kept in float16 beside the run), and only the
tail, `conv_head` and two linear heads train, with frozen batch-norm statistics. Augmentation keeps
colour: a horizontal flip of the maps, no colour jitter.

The tuned trunk is saved as a timm weights file (safetensors), so it is an ordinary image encoder spec
(`timm:ARCH@FILE`, `+colour` kept) with its own feature-cache key; products are re-encoded once with it
and the fast path trains as usual. The model folder bundles the file (`bundle_image_encoder`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import save_file

from ..config import ModelConfig
from ..data.catalog import Catalog
from ..data.schema import Product
from ..files import temp_path
from ..inference.thresholds import tag_matrix
from ..models.colour_descriptor import SUFFIX as COLOUR_SUFFIX
from ..models.factory import create_image_encoder
from .clip_image_side import ImageSide

WEIGHTS_FILE = "image_encoder.safetensors"


@dataclass
class ImageFinetuneConfig:
    stages: int = 2  # last trunk stages tuned (+ conv_head); the rest stays frozen
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-4  # the trunk's tail
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    max_products: int | None = None  # train on a random subset (time budget)
    seed: int = 0


def _trunk_encoder(spec: str, image_size: int | None):
    """(the encoder for `spec` at `image_size`, its timm trunk, whether it carries the colour descriptor)."""
    colour = spec.endswith(COLOUR_SUFFIX)
    encoder = create_image_encoder(spec[:-len(COLOUR_SUFFIX)] if colour else spec).set_precision("auto")
    if image_size is not None:
        encoder.set_image_size(image_size)
    trunk = getattr(encoder, "model", None)
    if trunk is None or not all(hasattr(trunk, a) for a in ("conv_stem", "blocks", "conv_head", "bn2")):
        raise ValueError(f"image fine-tuning needs an EfficientNet-style timm encoder (effnet-lite0, timm:...), "
                         f"not {spec!r}")
    return encoder, trunk, colour


def _labelled(products: Sequence[Product], categories: list[str], tags: list[str]):
    cat_index = {c: i for i, c in enumerate(categories)}
    y_cat = torch.tensor([cat_index.get(p.category, -1) for p in products])
    return y_cat, torch.from_numpy(tag_matrix(products, tags))


def _train_tail(side: ImageSide, maps: torch.Tensor, y_cat: torch.Tensor, y_tags: torch.Tensor, dim: int,
                n_categories: int, cfg: ImageFinetuneConfig, log: Callable[[str], None]) -> None:
    """Train the trunk's tail and two linear heads on the cached maps (flipped half the time)."""
    heads = torch.nn.ModuleDict({"category": torch.nn.Linear(dim, max(1, n_categories)),
                                 "tags": torch.nn.Linear(dim, y_tags.shape[1])})
    optimizer = torch.optim.AdamW([{"params": side.parameters(), "lr": cfg.lr},
                                   {"params": heads.parameters(), "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(maps) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, [cfg.lr, cfg.head_lr], total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    side.trunk.eval()  # frozen batch-norm statistics, as open_clip's freeze_bn_stats
    for epoch in range(cfg.epochs):
        t0, total = time.perf_counter(), 0.0
        for rows in torch.randperm(len(maps), generator=g).split(cfg.batch_size):
            x = maps[rows].float()
            flip = torch.rand(len(rows), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            with side.autocast():
                pooled = side.tail(x).float()
            loss = F.cross_entropy(heads["category"](pooled), y_cat[rows], ignore_index=-1, label_smoothing=0.1)
            loss = loss + 20.0 * F.binary_cross_entropy_with_logits(heads["tags"](pooled), y_tags[rows])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            total += loss.item() * len(rows)
        log(f"  image fine-tune epoch {epoch}: loss {total / len(maps):.4f} in {time.perf_counter() - t0:.0f}s")


def finetune_image_encoder(spec: str, image_size: int | None, train: Sequence[Product], image_root: Path,
                           categories: list[str], tags: list[str], out_dir: str | Path, cfg: ImageFinetuneConfig,
                           log: Callable[[str], None] = print) -> str:
    """Tune the last stages of `spec`'s trunk on `train`; save the trunk to `out_dir` and return the spec
    that loads it (the colour descriptor kept when `spec` has it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    encoder, trunk, colour = _trunk_encoder(spec, image_size)
    products = [p for p in train if p.image]
    if cfg.max_products and len(products) > cfg.max_products:
        keep = torch.randperm(len(products), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_products]
        products = [products[i] for i in sorted(keep.tolist())]
    side = ImageSide(trunk, cfg.stages, encoder.autocast)
    t0 = time.perf_counter()
    maps, ok = side.maps(products, encoder.transform, image_root, out_dir, encoder.cache_key(), encoder.autocast,
                         prefix="image-maps")
    products = [p for p, good in zip(products, ok) if good]
    log(f"  image fine-tune: tail-input maps of {len(products)} train photos in {time.perf_counter() - t0:.0f}s")
    y_cat, y_tags = _labelled(products, categories, tags)
    _train_tail(side, maps, y_cat, y_tags, int(trunk.num_features), len(categories), cfg, log)
    weights = out_dir / WEIGHTS_FILE
    tmp = temp_path(weights)
    save_file({k: v.detach().contiguous() for k, v in trunk.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    for stale in out_dir.glob("image-maps-*.pt"):  # hundreds of MB, needed only by this tuning
        stale.unlink()
    arch = trunk.pretrained_cfg.get("architecture") or type(trunk).__name__
    return f"timm:{arch}@{weights.resolve()}" + (COLOUR_SUFFIX if colour else "")


def finetune_image_key(cfg: ModelConfig, train: Sequence[Product], ft: ImageFinetuneConfig) -> str:
    """What a tuned trunk depends on: the base encoder, photo size, settings, and the train photos and labels."""
    h = hashlib.sha256(json.dumps([cfg.image_encoder, cfg.image_size, dataclasses.asdict(ft)],
                                  sort_keys=True).encode())
    for p in train:
        h.update(f"{p.image_hash}|{p.category}|{'|'.join(sorted(p.tags))}\n".encode())
    return h.hexdigest()[:24]


def finetuned_image_config(catalog: Catalog, cfg: ModelConfig, ft: ImageFinetuneConfig, folder: Path,
                           max_train: int | None, log: Callable[[str], None]) -> ModelConfig:
    """Tune the config's image trunk (unless `folder` already holds the result for the same encoder,
    settings and train split) and point the config at it."""
    train = [p for p in catalog.products if p.split == "train"][:max_train or None]
    key = finetune_image_key(cfg, train, ft)
    marker, spec_file = folder / "finetune_key.txt", folder / "spec.txt"
    if spec_file.exists() and marker.exists() and marker.read_text().strip() == key:
        log(f"reusing the tuned image trunk in {folder}")
    else:
        categories = sorted({p.category for p in train if p.category})
        tags = catalog.meta.get("tag_vocab") or sorted({t for p in train for t in p.tags})
        log(f"tuning the last {ft.stages} stages of {cfg.image_encoder} on {len(train)} train products")
        spec = finetune_image_encoder(cfg.image_encoder, cfg.image_size, train, catalog.image_root, categories,
                                      tags, folder, ft, log)
        spec_file.write_text(spec + "\n", encoding="utf-8")
        marker.write_text(key + "\n", encoding="utf-8")
    return dataclasses.replace(cfg, image_encoder=spec_file.read_text(encoding="utf-8").strip())


def bundle_image_encoder(encoder_dir: Path, model_dir: Path) -> None:
    """Copy a tuned trunk into the model folder and point the config at it (`@./image_encoder.safetensors`)."""
    shutil.copy(encoder_dir / WEIGHTS_FILE, model_dir / WEIGHTS_FILE)
    cfg_path = model_dir / "config.json"
    meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    spec = meta["model"]["image_encoder"]
    arch = spec[len("timm:"):spec.index("@")]
    meta["model"]["image_encoder"] = f"timm:{arch}@./{WEIGHTS_FILE}" + (COLOUR_SUFFIX if spec.endswith(COLOUR_SUFFIX) else "")
    cfg_path.write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
