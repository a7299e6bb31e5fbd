"""The training loop, with accelerate: the same code on a CPU, one GPU, or `accelerate launch` on many.

Per epoch: train (mixed precision, gradient accumulation, warmup + cosine/linear schedule, AdamW with
weight decay, optional L1), validate (metrics gathered across processes), keep the best model, write
a resumable checkpoint atomically, stop early when validation stops improving. Each epoch reseeds
from (seed, epoch), so a run resumed from a checkpoint replays exactly what the uninterrupted run did.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from ..config import TrainConfig
from ..features.source import collate, to_batch
from ..files import swap_in_folder, write_json_atomic
from ..metrics import prf
from ..models.encoder_base import default_device, resolve_precision
from ..models.tagger import Tagger
from .data import FeatureDataset

STATE = "trainer_state.json"
PHOTO_HEAD_LAYERS = ("photo_head.norm.", "photo_head.linear.")
EPOCH_SEED_STRIDE = 1000  # epoch seeds of different run seeds never meet (fewer than 1000 epochs)
# accelerate warns on every checkpoint that GPT-2's tied lm_head was not saved twice: expected, not news.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def mixed_precision(setting: str) -> str:
    """accelerate's mixed-precision mode; 'auto' is bf16 where the device runs it natively (CUDA with
    bf16, CPUs with AVX512-BF16 or AMX), fp16 on older GPUs, else no."""
    if setting != "auto":
        return setting
    precision = resolve_precision("auto", default_device())
    return {"fp32": "no"}.get(precision, precision)


def sparse_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters that get sparse gradients (embedding tables built with sparse=True)."""
    return [m.weight for m in model.modules()
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad]


def _param_groups(model: Tagger, weight_decay: float, lr: float,
                  lr_by_prefix: dict[str, float] | None = None) -> list[dict]:
    """Dense parameters, with weight decay except on those the model says it would hurt, at `lr` or the
    rate of the first prefix of `lr_by_prefix` their name starts with."""
    sparse = {id(p) for p in sparse_parameters(model)}
    skip_decay = model.no_decay_parameters()
    groups: dict[tuple[float, bool], list] = {(lr, True): [], (lr, False): []}  # the order checkpoints know
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in sparse:
            rate = next((r for prefix, r in (lr_by_prefix or {}).items() if name.startswith(prefix)), lr)
            groups.setdefault((rate, name not in skip_decay), []).append(p)
    return [{"params": params, "lr": rate, "weight_decay": weight_decay if decays else 0.0}
            for (rate, decays), params in groups.items()]


def _learning_rates(cfg: TrainConfig) -> dict[str, float] | None:
    """`lr_by_prefix`, then the photo head's own layers at `photo_lr` (not its weights into the decoder,
    which learn from the decoder's loss at `lr`)."""
    rates = dict(cfg.lr_by_prefix or {})
    if cfg.photo_lr is not None:
        for layer in PHOTO_HEAD_LAYERS:
            rates.setdefault(layer, cfg.photo_lr)
    return rates or None


@torch.no_grad()
def validate(model, loader, accelerator: Accelerator) -> dict[str, float]:
    """Loss-free validation metrics from the heads (threshold 0.5), gathered across all processes."""
    model.eval()
    cats, cat_gold, tag_pred, tag_gold = [], [], [], []
    for raw in loader:
        b = to_batch(raw)
        out = model(b)
        g = accelerator.gather_for_metrics((out["category_logits"].argmax(-1), b.category,
                                            (out["tag_logits"] > 0), b.tags.bool()))
        cats.append(g[0].cpu()), cat_gold.append(g[1].cpu()), tag_pred.append(g[2].cpu()), tag_gold.append(g[3].cpu())
    c, cg = torch.cat(cats), torch.cat(cat_gold)
    known = cg >= 0
    acc = float((c[known] == cg[known]).float().mean()) if known.any() else 0.0
    tp, tg = torch.cat(tag_pred).numpy(), torch.cat(tag_gold).numpy()
    p, r, f = prf([set(np.nonzero(row)[0]) for row in tg], [set(np.nonzero(row)[0]) for row in tp])
    return {"val_category_accuracy": acc, "val_tags_micro_f1": f, "val_score": (acc + f) / 2, "val_products": len(c)}


@dataclass
class _Training:
    """What `fit` prepares once: the accelerator, the loaders, optimizers and schedulers."""

    accelerator: Accelerator
    model: torch.nn.Module  # wrapped for the processes (DDP); `unwrapped` is the Tagger itself
    unwrapped: Tagger
    train_dl: DataLoader
    val_dl: DataLoader
    optimizers: list
    schedulers: list


def _prepare(model: Tagger, train_data: FeatureDataset, val_data: FeatureDataset, cfg: TrainConfig) -> _Training:
    # the model's buffers (IDF, thresholds, the word-score table: hundreds of MB) never change in
    # training, so DDP need not re-broadcast them before every forward
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.grad_accum, cpu=default_device() == "cpu",
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    set_seed(cfg.seed)
    # plain shuffled batches: batches grouped by tag-sequence length were faster but hold few
    # categories each, and validation F1 fell (docs/experiments.md)
    train_dl = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, drop_last=False)
    val_dl = DataLoader(val_data, batch_size=cfg.batch_size * 2, shuffle=False, collate_fn=collate)
    # AdamW for dense weights; SparseAdam (no weight decay, its own learning rate) for sparse embedding
    # tables, same schedule
    optimizers = [torch.optim.AdamW(_param_groups(model, cfg.weight_decay, cfg.lr, _learning_rates(cfg)), lr=cfg.lr)]
    sparse = sparse_parameters(model)
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=cfg.embedding_lr))
    steps = cfg.epochs * math.ceil(len(train_dl) / accelerator.num_processes / cfg.grad_accum)
    schedulers = [get_scheduler(cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup", o,
                                num_warmup_steps=int(cfg.warmup_ratio * steps), num_training_steps=steps)
                  for o in optimizers]
    wrapped, train_dl, val_dl, *rest = accelerator.prepare(model, train_dl, val_dl, *optimizers, *schedulers)
    return _Training(accelerator, wrapped, accelerator.unwrap_model(wrapped), train_dl, val_dl,
                     rest[:len(optimizers)], rest[len(optimizers):])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffling, dropout and augmentation: it depends on (seed, epoch) alone, so
    a run resumed from a checkpoint replays exactly what the uninterrupted run did."""
    return seed * EPOCH_SEED_STRIDE + epoch


def _train_epoch(t: _Training, cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """One pass over the training data; returns the mean of each loss."""
    set_seed(epoch_seed(cfg.seed, epoch))
    if hasattr(t.train_dl, "set_epoch"):
        t.train_dl.set_epoch(epoch)
    t.model.train()
    totals, n = {}, 0
    for raw in t.train_dl:
        with t.accelerator.accumulate(t.model):
            b = to_batch(raw)
            if cfg.feature_noise > 0:  # augmentation on cached vectors
                b.text = b.text + cfg.feature_noise * b.text.std() * torch.randn_like(b.text)
                b.image = b.image + cfg.feature_noise * b.image.std() * torch.randn_like(b.image)
            out = t.model(b, drop_modalities=True)
            losses = t.unwrapped.losses(b, out, cfg)
            t.accelerator.backward(losses["total"])
            for opt, sched in zip(t.optimizers, t.schedulers):
                opt.step()
                sched.step()
                opt.zero_grad()
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach())
        n += 1
    return {k: v / max(n, 1) for k, v in totals.items()}


def _end_epoch(t: _Training, cfg: TrainConfig, state: dict, row: dict, run_dir: Path, log) -> None:
    """Record the epoch, keep the model if it is the best so far, log, and checkpoint."""
    state["history"].append(row)
    improved = row[cfg.monitor] > state["best_score"]
    if improved:
        state.update(best_score=row[cfg.monitor], best_epoch=row["epoch"], bad_epochs=0)
        if t.accelerator.is_main_process:
            t.unwrapped.save(run_dir / "best_model")
    else:
        state["bad_epochs"] += 1
    state["epoch"] = row["epoch"]
    log(f"epoch {row['epoch']:3d}  loss {row.get('train_total_loss', 0):.4f}  val acc "
        f"{row['val_category_accuracy']:.4f}  tag F1 {row['val_tags_micro_f1']:.4f}  {'*' if improved else ' '}  "
        f"{row['seconds']:.1f}s")
    if (row["epoch"] + 1) % cfg.checkpoint_every == 0 or row["epoch"] == cfg.epochs - 1:
        _checkpoint(t.accelerator, run_dir / "checkpoint", state)


def fit(model: Tagger, train_data: FeatureDataset, val_data: FeatureDataset, cfg: TrainConfig,
        run_dir: str | Path, resume: bool = False, log: Callable[[str], None] = print,
        stop_after_epoch: int | None = None) -> dict:
    """Train `model`; the best epoch's model is written to `run_dir/best_model/`, history to
    `run_dir/history.json`. `stop_after_epoch` ends the process's work early (to test resume)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint"
    t = _prepare(model, train_data, val_data, cfg)
    state = {"epoch": -1, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume and (ckpt / STATE).exists():
        t.accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / STATE).read_text())
        log(f"resumed from {ckpt} after epoch {state['epoch']}")
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if state["bad_epochs"] >= cfg.patience:
            break
        t0 = time.perf_counter()
        losses = _train_epoch(t, cfg, epoch)
        metrics = validate(t.model, t.val_dl, t.accelerator)
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 2),
               "lr": t.schedulers[0].get_last_lr()[0],
               **{f"train_{k}_loss": round(v, 5) for k, v in losses.items()}, **metrics}
        _end_epoch(t, cfg, state, row, run_dir, log)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return state
    if t.accelerator.is_main_process:
        write_json_atomic(run_dir / "history.json", state)
    t.accelerator.wait_for_everyone()
    return state


def _checkpoint(accelerator: Accelerator, ckpt: Path, state: dict) -> None:
    """Save model, optimizer, scheduler and RNG states to a temp folder, then swap it in."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE, state)
        swap_in_folder(tmp, ckpt)
    accelerator.wait_for_everyone()
