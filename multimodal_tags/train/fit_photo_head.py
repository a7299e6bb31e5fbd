"""Fit a model's photo head before the tagger trains, cross-fitted as the word scores are.

The photo head (models/heads.PhotoHead) is a linear read of a fixed photo vector whose logits the
decoder adds to its own. Trained with the tagger, the decoder learns how far to trust it from its
in-sample logits; a head that fits well (a large step, the single-valued keys' softmax loss) is much
surer of the train photos than of new ones (Myntra: colour right for 79% of train photos, 65% of val
photos), and the decoder then leans on it too hard. So, with `TrainConfig.photo_folds` = K, the head
is fitted first: the train products' logits come from K heads that never saw their fold (a masked
copy from its product's fold), the model keeps the head fitted on all of them, frozen, and the
decoder learns from logits as honest as those it will meet.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from ..config import TrainConfig
from ..models.heads import PhotoHead, photo_loss
from ..models.tagger import Tagger
from .data import FeatureDataset


def fit_photo_head(head: PhotoHead, image: torch.Tensor, tags: torch.Tensor, category: torch.Tensor,
                   tcfg: TrainConfig, seed: int) -> PhotoHead:
    """Train `head` on photo vectors (every row shows a photo) with the photo loss: AdamW at `photo_lr`
    (else `lr`), warm-up then cosine decay over `epochs` epochs of `batch_size` rows."""
    lr = tcfg.photo_lr or tcfg.lr
    optimizer = torch.optim.AdamW(head.probe_parameters(), lr=lr, weight_decay=tcfg.weight_decay)
    steps = max(1, tcfg.epochs * math.ceil(len(image) / tcfg.batch_size))
    warmup = max(1, int(tcfg.warmup_ratio * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))))
    g = torch.Generator().manual_seed(seed)
    groups, shown = (head.group_index, head.group_mask), torch.ones(len(image), dtype=torch.bool)
    head.train()
    for _ in range(tcfg.epochs):
        for rows in torch.randperm(len(image), generator=g).split(tcfg.batch_size):
            tag_logits, category_logits = head(image[rows])
            loss = photo_loss(tag_logits, category_logits, tags[rows], category[rows], shown[rows], groups,
                              tcfg.photo_value_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def _logits(head: PhotoHead, image: torch.Tensor) -> torch.Tensor:
    tag_logits, category_logits = head(image)
    return torch.cat([tag_logits, category_logits], dim=1)


def _fresh(model: Tagger) -> PhotoHead:
    head = model.photo_head
    fresh = PhotoHead(head.norm.normalized_shape[0], head.n_tags, head.linear.out_features - head.n_tags,
                      head.drop.p)
    fresh.group_index, fresh.group_mask = head.group_index, head.group_mask
    return fresh


def prepare_photo_head(model: Tagger, train: FeatureDataset, tcfg: TrainConfig,
                       log: Callable[[str], None] = print) -> None:
    """With `photo_folds` > 0: give `train` its cross-fitted photo logits (rows without a photo get
    zeros, which the model masks) and `model` the photo head fitted on every train photo, frozen."""
    if model.photo_head is None or tcfg.photo_folds <= 0:
        return
    t0, n = time.perf_counter(), train.n_original
    image, shown = train.features.image.float(), train.features.has_image.bool()
    tags, category = train.tags.float(), train.category
    # each original row's fold, and each masked copy's its product's
    fold = np.empty(n, dtype=np.int64)
    for k, held in enumerate(np.array_split(np.random.default_rng(tcfg.seed).permutation(n), tcfg.photo_folds)):
        fold[held] = k
    fold = torch.from_numpy(np.concatenate([fold, fold[train.copy_of]]))
    original = torch.arange(len(image)) < n
    logits = torch.zeros(len(image), model.photo_head.linear.out_features)
    for k in range(tcfg.photo_folds):
        fit = original & shown & (fold != k)
        head = fit_photo_head(_fresh(model), image[fit], tags[fit], category[fit], tcfg, tcfg.seed + k)
        held = shown & (fold == k)
        logits[held] = _logits(head, image[held])
    fit = original & shown
    head = fit_photo_head(_fresh(model), image[fit], tags[fit], category[fit], tcfg, tcfg.seed + tcfg.photo_folds)
    model.photo_head.take_probe(head)
    train.features.photo_scores = logits
    log(f"photo head: {tcfg.photo_folds} folds + 1 fit on {int(fit.sum())} photos "
        f"({len(image) - n} masked copies scored) in {time.perf_counter() - t0:.0f}s")
