"""Fusion heads: combine a product's text and image vectors into one fused vector.

Both take (text, image, has_text, has_image) and tolerate a missing modality: its vector is ignored
(masked), never an error. During training, modality dropout hides one modality of a random share of
products so the model learns to tag from either alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FusionOutput:
    fused: torch.Tensor  # [batch, dim]
    weights: torch.Tensor  # [batch, 2]: how much text and image contributed (gated), or which were present


def modality_dropout(has_text: torch.Tensor, has_image: torch.Tensor, p: float,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide text or image (never both) for a share p of the products that have both."""
    if p <= 0:
        return has_text, has_image
    both = has_text & has_image
    drop = (torch.rand(has_text.shape, device=has_text.device, generator=generator) < p) & both
    which = torch.rand(has_text.shape, device=has_text.device, generator=generator) < 0.5
    return has_text & ~(drop & which), has_image & ~(drop & ~which)


class _Projection(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim), nn.GELU())


class ConcatFusion(nn.Module):
    """Baseline: project each modality, concatenate with presence flags, then an MLP."""

    def __init__(self, text_dim: int, image_dim: int, dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.text, self.image = _Projection(text_dim, dim, dropout), _Projection(image_dim, dim, dropout)
        self.mlp = nn.Sequential(nn.Linear(2 * dim + 2, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, text, image, has_text, has_image) -> FusionOutput:
        mt, mi = has_text.unsqueeze(-1).to(text.dtype), has_image.unsqueeze(-1).to(image.dtype)
        t, i = self.text(text) * mt, self.image(image) * mi
        fused = self.norm(self.mlp(torch.cat([t, i, mt, mi], dim=-1)) + t + i)
        return FusionOutput(fused, torch.cat([mt, mi], dim=-1))


class GatedFusion(nn.Module):
    """Each modality is projected; a gate (softmax over present modalities) weighs them per product.

    The gate values are returned as the product's modality weights: they say how much the text and
    the photo mattered for it.
    """

    def __init__(self, text_dim: int, image_dim: int, dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.text, self.image = _Projection(text_dim, dim, dropout), _Projection(image_dim, dim, dropout)
        self.gate = nn.Linear(2 * dim, 2)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, text, image, has_text, has_image) -> FusionOutput:
        t, i = self.text(text), self.image(image)
        present = torch.stack([has_text, has_image], dim=-1)
        logits = self.gate(torch.cat([t * has_text.unsqueeze(-1), i * has_image.unsqueeze(-1)], dim=-1))
        logits = logits.masked_fill(~present, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1) * present.any(-1, keepdim=True)  # no modality: all zero
        mixed = weights[:, :1] * t + weights[:, 1:] * i
        return FusionOutput(self.norm(mixed + self.out(mixed)), weights)


FUSIONS = {"concat": ConcatFusion, "gated": GatedFusion}


def create_fusion(kind: str, text_dim: int, image_dim: int, dim: int, dropout: float) -> nn.Module:
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion {kind!r}; choose from {', '.join(FUSIONS)}")
    return FUSIONS[kind](text_dim, image_dim, dim, dropout)
