"""The slow path: fine-tune the text encoder end to end on the category and tag objectives.

The fine-tuned encoder is saved as an ordinary transformers folder, so it becomes a new text encoder
spec (`hf:FOLDER`) with its own feature-cache key (the key hashes the weights): after fine-tuning,
products are re-encoded once and the fast path (heads on cached features) trains as usual.
On 2 CPU cores, MiniLM-L6 trains at about 95 texts/s in bf16 at 48 tokens; `max_products` and
`freeze_layers` trade quality for time.
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
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from transformers import get_scheduler

from ..config import ModelConfig
from ..data.augment import view_seed
from ..data.catalog import Catalog
from ..data.masking import label_word_view
from ..data.schema import Product
from ..models.encoder_base import default_device
from ..models.factory import create_text_encoder
from .loop import mixed_precision


@dataclass
class FinetuneConfig:
    epochs: int = 1
    max_length: int = 48  # names and the start of descriptions carry most of the signal; cost grows with it
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 2e-3
    warmup_ratio: float = 0.06
    freeze_layers: int = 0  # bottom transformer layers kept frozen (faster backward)
    max_products: int | None = None  # train on a random subset (time budget)
    # share of texts, drawn again each epoch, seen as label-word views (data/masking.label_word_view): the
    # encoder learns to find a category in words other than its name, as the masked copies teach the heads
    masked_share: float = 0.0
    mixed_precision: str = "auto"
    seed: int = 0


def finetune_text_encoder(spec: str, train: Sequence[Product], categories: list[str], tags: list[str],
                          out_dir: str | Path, cfg: FinetuneConfig, log: Callable[[str], None] = print) -> Path:
    """Fine-tune `spec` with a category head and a tag head on `train`; save the encoder to `out_dir`."""
    out_dir = Path(out_dir)
    set_seed(cfg.seed)
    encoder = create_text_encoder(spec, max_length=cfg.max_length)
    model = encoder.model
    layers = getattr(getattr(model, "encoder", None), "layer", [])
    for layer in list(layers)[:cfg.freeze_layers]:
        layer.requires_grad_(False)
    if cfg.freeze_layers:
        model.embeddings.requires_grad_(False)
    cat_index, tag_index = {c: i for i, c in enumerate(categories)}, {t: i for i, t in enumerate(tags)}
    items = TrainTexts(_sample(train, cfg), cat_index, tag_index, cfg.masked_share, cfg.seed)

    def collate(batch):
        enc = encoder.tokenize([b[0] for b in batch])
        y_tags = torch.zeros(len(batch), len(tags))
        for i, b in enumerate(batch):
            y_tags[i, b[2]] = 1.0
        return enc["input_ids"], enc["attention_mask"], torch.tensor([b[1] for b in batch]), y_tags

    heads = torch.nn.ModuleDict({"category": torch.nn.Linear(encoder.dim, len(categories)),
                                 "tags": torch.nn.Linear(encoder.dim, len(tags))})
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision), cpu=default_device() == "cpu")
    loader = DataLoader(items, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.AdamW([{"params": [p for p in encoder.parameters() if p.requires_grad], "lr": cfg.lr},
                                   {"params": heads.parameters(), "lr": cfg.head_lr}], weight_decay=0.01)
    steps = cfg.epochs * math.ceil(len(loader) / accelerator.num_processes)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    encoder, heads, optimizer, loader, scheduler = accelerator.prepare(encoder, heads, optimizer, loader, scheduler)
    t0, seen = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        encoder.train()
        items.epoch = epoch
        for step, (ids, mask, y_cat, y_tags) in enumerate(loader):
            pooled = encoder(ids, mask).pooled
            loss = F.cross_entropy(heads["category"](pooled).float(), y_cat, ignore_index=-1, label_smoothing=0.1)
            loss = loss + 20.0 * F.binary_cross_entropy_with_logits(heads["tags"](pooled).float(), y_tags)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            seen += len(ids) * accelerator.num_processes
            if step % 100 == 0:
                rate = seen / (time.perf_counter() - t0)
                log(f"  fine-tune epoch {epoch} step {step}/{len(loader)} loss {loss.item():.4f} ({rate:.1f} texts/s)")
    if accelerator.is_main_process:
        core = accelerator.unwrap_model(encoder)
        # float16 on disk (half the model folder); loaded in float32, by training's features as by inference
        core.model.to(torch.float16).save_pretrained(str(out_dir))
        core.tokenizer.save_pretrained(str(out_dir))
    accelerator.wait_for_everyone()
    views = f" ({cfg.masked_share:.0%} of texts as label-word views)" if cfg.masked_share else ""
    log(f"  fine-tuned {spec} on {len(items)} products x {cfg.epochs} epoch(s){views} in "
        f"{time.perf_counter() - t0:.0f}s -> {out_dir}")
    return out_dir


def _sample(train: Sequence[Product], cfg: FinetuneConfig) -> list[Product]:
    """`train`, or a seeded random subset of `cfg.max_products` of it (time budget)."""
    products = list(train)
    if cfg.max_products and len(products) > cfg.max_products:
        g = torch.Generator().manual_seed(cfg.seed)
        products = [products[i] for i in torch.randperm(len(products), generator=g)[:cfg.max_products].tolist()]
    return products


class TrainTexts(Dataset):
    """(text, category index, tag indices) of each product; with `masked_share`, a seeded share of the
    texts, drawn again for each `epoch`, are label-word views that leave some of their labels unsaid."""

    def __init__(self, products: Sequence[Product], cat_index: dict[str, int], tag_index: dict[str, int],
                 masked_share: float = 0.0, seed: int = 0):
        if not 0.0 <= masked_share <= 1.0:
            raise ValueError(f"finetune_text.masked_share is {masked_share}: give a share between 0 and 1")
        self.products, self.masked_share, self.seed, self.epoch = list(products), masked_share, seed, 0
        self.labels = [(cat_index.get(p.category, -1), [tag_index[t] for t in p.tags if t in tag_index])
                       for p in self.products]

    def __len__(self) -> int:
        return len(self.products)

    def is_masked(self, i: int) -> bool:
        """Whether product `i` is seen as a label-word view in this epoch."""
        draw = view_seed(self.products[i].text_hash, 1_000_003 * self.seed + self.epoch)
        return draw < self.masked_share * 0xFFFFFFFF

    def __getitem__(self, i: int) -> tuple[str, int, list[int]]:
        p = self.products[i]
        if self.masked_share and self.is_masked(i):
            p = label_word_view(p, view_seed(p.text_hash, 7919 * self.seed + self.epoch + 1))
        return (p.text, *self.labels[i])


def finetune_key(spec: str, train: Sequence[Product], ft: FinetuneConfig) -> str:
    """What a fine-tuned encoder depends on: the base encoder, its settings and the train texts and labels."""
    h = hashlib.sha256(json.dumps([spec, dataclasses.asdict(ft)], sort_keys=True).encode())
    for p in train:
        h.update(f"{p.text_hash}|{p.category}|{'|'.join(sorted(p.tags))}\n".encode())
    return h.hexdigest()[:24]


def finetuned_config(catalog: Catalog, cfg: ModelConfig, ft: FinetuneConfig, folder: Path,
                     max_train: int | None, log: Callable[[str], None]) -> ModelConfig:
    """Fine-tune the config's text encoder (unless `folder` already holds the result for the same
    encoder, settings and train split) and point the config at it."""
    train = [p for p in catalog.products if p.split == "train"][:max_train or None]
    key = finetune_key(cfg.text_encoder, train, ft)
    marker = folder / "finetune_key.txt"
    if (folder / "config.json").exists() and marker.exists() and marker.read_text().strip() == key:
        log(f"reusing the fine-tuned text encoder in {folder}")
    else:
        if (folder / "config.json").exists():
            log(f"{folder} was fine-tuned on other texts or settings: fine-tuning again")
        categories = sorted({p.category for p in train if p.category})
        tags = catalog.meta.get("tag_vocab") or sorted({t for p in train for t in p.tags})
        log(f"fine-tuning {cfg.text_encoder} on {len(train)} train products")
        finetune_text_encoder(cfg.text_encoder, train, categories, tags, folder, ft, log)
        marker.write_text(key + "\n", encoding="utf-8")
    return dataclasses.replace(cfg, text_encoder=f"hf:{folder.resolve()}", text_max_length=ft.max_length)


def bundle_text_encoder(encoder_dir: Path, model_dir: Path) -> None:
    """Copy a fine-tuned encoder into the model folder and point the config at it (relative path)."""
    shutil.copytree(encoder_dir, model_dir / "text_encoder", dirs_exist_ok=True)
    cfg_path = model_dir / "config.json"
    meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    meta["model"]["text_encoder"] = "hf:./text_encoder"
    cfg_path.write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
