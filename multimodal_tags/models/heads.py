"""Category and tag heads, their losses, and per-tag threshold tuning."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """Dropout + linear layer over the fused vector: the category head (one logit per category,
    cross-entropy with optional label smoothing) and the tag head (one logit per tag, multi-label)."""

    def __init__(self, dim: int, n_out: int, dropout: float = 0.1):
        super().__init__()
        self.drop, self.linear = nn.Dropout(dropout), nn.Linear(dim, n_out)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(fused))


CategoryHead = TagHead = LinearHead


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                    clip: float = 0.05) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., 2021) for multi-label tagging with many negatives per product:
    easy negatives are down-weighted by p^gamma_neg and probabilities under `clip` are ignored.
    gamma_pos = gamma_neg = clip = 0 is plain BCE; gamma_pos = gamma_neg = 2 is focal loss."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    loss_pos = targets * (1 - p).pow(gamma_pos) * F.logsigmoid(logits)
    log_one_minus = torch.log((1 - p_neg).clamp(min=1e-8))
    loss_neg = (1 - targets) * p_neg.pow(gamma_neg) * log_one_minus
    return -(loss_pos + loss_neg).sum(-1).mean()


def tag_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """'bce' (mean over tags), 'asymmetric' or 'focal'."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if kind == "asymmetric":
        return asymmetric_loss(logits, targets) / targets.shape[-1]
    if kind == "focal":
        return asymmetric_loss(logits, targets, gamma_pos=2.0, gamma_neg=2.0, clip=0.0) / targets.shape[-1]
    raise ValueError(f"unknown tag loss {kind!r}; choose bce, asymmetric or focal")


class GradientReversal(torch.autograd.Function):
    """Identity forward, negated (scaled) gradient backward: the adversarial trick of DANN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


class AdversaryHead(nn.Module):
    """Predicts a nuisance label (e.g. the source shop) through gradient reversal, so that training
    makes the fused vector *uninformative* about it."""

    def __init__(self, dim: int, n_classes: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, n_classes))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.mlp(GradientReversal.apply(fused, self.scale))


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray | None = None,
                    min_positives: int = 5, default: float = 0.5) -> np.ndarray:
    """Per-tag decision thresholds that maximise each tag's F1 on validation data.

    Tags with fewer than `min_positives` validation positives keep a global threshold (the best
    single threshold for micro-F1), since a per-tag optimum over a handful of examples is noise.
    """
    grid = np.linspace(0.05, 0.95, 19) if grid is None else grid
    targets = targets.astype(bool)
    best_global, best_f = default, -1.0
    for th in grid:
        pred = probs >= th
        tp = (pred & targets).sum()
        f = 2 * tp / max(pred.sum() + targets.sum(), 1)
        if f > best_f:
            best_global, best_f = th, f
    out = np.full(probs.shape[1], best_global, dtype=np.float32)
    for j in np.where(targets.sum(0) >= min_positives)[0]:
        p, y = probs[:, j][:, None] >= grid[None, :], targets[:, j][:, None]
        f1 = 2 * (p & y).sum(0) / np.maximum(p.sum(0) + y.sum(0), 1)
        out[j] = grid[int(np.argmax(f1))]
    return out


class PhotoHead(nn.Module):
    """Tag and category logits from the photo's vector alone: the photo's own evidence, which the tagger
    adds (x a learned weight per tag and per category) to the decoder's tag logits and to the category
    logits, as the word scores add the text's. Per tag, not one global weight: the photo can lead on
    colour while the words lead on fabric."""

    def __init__(self, image_dim: int, n_tags: int, n_categories: int, dropout: float = 0.1, init_weight: float = 0.5,
                 value_groups: list[list[int]] | None = None):
        super().__init__()
        self.n_tags = n_tags
        # the tag columns of each single-valued key, padded into [keys, values] (`single_value_loss`); not
        # saved: the model rebuilds them from its tokenizer
        index, mask = value_group_index(value_groups or [])
        self.register_buffer("group_index", index, persistent=False)
        self.register_buffer("group_mask", mask, persistent=False)
        self.norm, self.drop = nn.LayerNorm(image_dim), nn.Dropout(dropout)
        self.linear = nn.Linear(image_dim, n_tags + n_categories)
        self.tag_weight = nn.Parameter(torch.full((n_tags,), init_weight))
        self.category_weight = nn.Parameter(torch.full((n_categories,), init_weight))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tag logits [b, n_tags], category logits [b, n_categories])."""
        logits = self.linear(self.drop(self.norm(image)))
        return logits[:, :self.n_tags], logits[:, self.n_tags:]

    def biases(self, tag_logits: torch.Tensor, category_logits: torch.Tensor,
               has_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the photo adds to the decoder's tag logits and to the category logits: its logits, cut
        off from their gradient (the head learns from its own loss, as a stacked model), x the learned
        weights; zero where the photo is missing or hidden."""
        shown = has_image.float()[:, None]
        return (tag_logits.detach().float() * self.tag_weight * shown,
                category_logits.detach().float() * self.category_weight * shown)


def value_group_index(groups: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tag columns of each group, padded with column 0 into [groups, longest]; and the mask of real ones."""
    width = max((len(g) for g in groups), default=0)
    index = torch.zeros(len(groups), width, dtype=torch.long)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    for i, g in enumerate(groups):
        index[i, :len(g)], mask[i, :len(g)] = torch.as_tensor(g, dtype=torch.long), True
    return index, mask


def single_value_loss(tag_logits: torch.Tensor, tags: torch.Tensor, index: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor | None:
    """Softmax cross-entropy over the values of each single-valued key (colour, gender, ...), for the
    products that carry exactly one of them: the key's values compete, as they do when a row is filled
    with its most probable value. Per-tag BCE alone left a linear photo head's colour 0.02-0.04 less
    accurate on Myntra val (docs/implicit.md). Mean over (product, key) pairs; None when no product has one."""
    if index.numel() == 0:
        return None
    logits = tag_logits.float()[:, index].masked_fill(~mask, float("-inf"))  # [b, keys, values]
    target = tags[:, index] * mask
    rows = target.sum(-1) == 1  # [b, keys]
    if not rows.any():
        return None
    picked = (logits.masked_fill(~mask, 0.0) * target).sum(-1)
    return (torch.logsumexp(logits, -1) - picked)[rows].mean()


def photo_loss(tag_logits: torch.Tensor, category_logits: torch.Tensor, tags: torch.Tensor | None,
               category: torch.Tensor | None, has_image: torch.Tensor,
               value_groups: tuple[torch.Tensor, torch.Tensor] | None = None,
               value_weight: float = 0.0) -> torch.Tensor | None:
    """BCE on tags plus cross-entropy on the category, over the products that have a photo; with
    `value_groups` (PhotoHead.group_index, group_mask), also `value_weight` x `single_value_loss`."""
    rows = has_image.bool()
    if not rows.any():
        return None
    loss = tag_logits.new_zeros((), dtype=torch.float32)
    if tags is not None:
        loss = loss + F.binary_cross_entropy_with_logits(tag_logits[rows].float(), tags[rows])
        values = (single_value_loss(tag_logits[rows], tags[rows], *value_groups)
                  if value_groups and value_weight else None)
        if values is not None:
            loss = loss + value_weight * values
    if category is not None and (category[rows] >= 0).any():
        loss = loss + F.cross_entropy(category_logits[rows].float(), category[rows], ignore_index=-1)
    return loss
