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
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from ..config import TrainConfig
from ..eval.metrics import prf
from ..models.encoder_base import resolve_precision
from ..models.tagger import Tagger
from .data import FeatureDataset, collate, to_batch

STATE = "trainer_state.json"
# accelerate warns on every checkpoint that GPT-2's tied lm_head was not saved twice: expected, not news.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def mixed_precision(setting: str) -> str:
    """accelerate's mixed-precision mode; 'auto' is bf16 where the device runs it natively (about 2.5x
    faster training steps on this 2-core AVX512-BF16 CPU), fp16 on older GPUs, else no."""
    if setting != "auto":
        return setting
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"fp32": "no"}.get(resolve_precision("auto", device), resolve_precision("auto", device))


def sparse_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters that get sparse gradients (embedding tables built with sparse=True)."""
    return [m.weight for m in model.modules()
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Dense parameters; no weight decay on biases, norms and embeddings-as-vectors (decaying them only
    hurts)."""
    sparse = {id(p) for p in sparse_parameters(model)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in sparse:
            (decay if p.ndim >= 2 and "wpe" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


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


def fit(model: Tagger, train_data: FeatureDataset, val_data: FeatureDataset, cfg: TrainConfig,
        run_dir: str | Path, resume: bool = False, log: Callable[[str], None] = print,
        stop_after_epoch: int | None = None) -> dict:
    """Train `model`; the best epoch's model is written to `run_dir/best_model/`, history to
    `run_dir/history.json`. `stop_after_epoch` ends the process's work early (to test resume)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint"
    # the model's buffers (IDF, thresholds, the word-score table: 307 MB on Myntra) never change in
    # training, so DDP need not re-broadcast them before every forward
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    set_seed(cfg.seed)
    # (batches grouped by tag-sequence length made epochs 1.6x faster but validation tag F1 5.5 points
    # lower after 3 epochs: a batch of products with the same number of tags is a batch of few categories)
    train_dl = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, drop_last=False)
    val_dl = DataLoader(val_data, batch_size=cfg.batch_size * 2, shuffle=False, collate_fn=collate)
    # AdamW for dense weights; SparseAdam (no weight decay, its own learning rate) for sparse embedding
    # tables, same schedule
    optimizers = [torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)]
    sparse = sparse_parameters(model)
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=cfg.embedding_lr))
    steps = cfg.epochs * math.ceil(len(train_dl) / accelerator.num_processes / cfg.grad_accum)
    schedulers = [get_scheduler(cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup", o,
                                num_warmup_steps=int(cfg.warmup_ratio * steps), num_training_steps=steps)
                  for o in optimizers]
    model, train_dl, val_dl, *rest = accelerator.prepare(model, train_dl, val_dl, *optimizers, *schedulers)
    optimizers, schedulers = rest[:len(optimizers)], rest[len(optimizers):]
    state = {"epoch": -1, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume and (ckpt / STATE).exists():
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / STATE).read_text())
        log(f"resumed from {ckpt} after epoch {state['epoch']}")
    unwrapped = accelerator.unwrap_model(model)
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if state["bad_epochs"] >= cfg.patience:
            break
        set_seed(cfg.seed * 1000 + epoch)  # the epoch's shuffling, dropout and augmentation depend on it alone
        if hasattr(train_dl, "set_epoch"):
            train_dl.set_epoch(epoch)
        model.train()
        t0, totals, n = time.perf_counter(), {}, 0
        for raw in train_dl:
            with accelerator.accumulate(model):
                b = to_batch(raw)
                if cfg.feature_noise > 0:  # augmentation on cached vectors
                    b.text = b.text + cfg.feature_noise * b.text.std() * torch.randn_like(b.text)
                    b.image = b.image + cfg.feature_noise * b.image.std() * torch.randn_like(b.image)
                out = model(b, drop_modalities=True)
                losses = unwrapped.losses(b, out, cfg)
                accelerator.backward(losses["total"])
                for opt, sched in zip(optimizers, schedulers):
                    opt.step()
                    sched.step()
                    opt.zero_grad()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
            n += 1
        metrics = validate(model, val_dl, accelerator)
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 2), "lr": schedulers[0].get_last_lr()[0],
               **{f"train_{k}_loss": round(v / max(n, 1), 5) for k, v in totals.items()}, **metrics}
        state["history"].append(row)
        improved = metrics[cfg.monitor] > state["best_score"]
        if improved:
            state.update(best_score=metrics[cfg.monitor], best_epoch=epoch, bad_epochs=0)
            if accelerator.is_main_process:
                unwrapped.save(run_dir / "best_model")
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        log(f"epoch {epoch:3d}  loss {row.get('train_total_loss', 0):.4f}  val acc {metrics['val_category_accuracy']:.4f}"
            f"  tag F1 {metrics['val_tags_micro_f1']:.4f}  {'*' if improved else ' '}  {row['seconds']:.1f}s")
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch == cfg.epochs - 1:
            _checkpoint(accelerator, ckpt, state)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return state
    if accelerator.is_main_process:
        _atomic_json(run_dir / "history.json", state)
    accelerator.wait_for_everyone()
    return state


def _checkpoint(accelerator: Accelerator, ckpt: Path, state: dict) -> None:
    """Save model, optimizer, scheduler and RNG states to a temp folder, then swap it in."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        _atomic_json(tmp / STATE, state)
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
