"""Batch norms folded into the convolutions before them, for fp32 inference: the same function, half the work.

In eval mode a batch norm is a per-channel affine map, so a convolution followed by one equals a single
convolution with scaled weights and a bias. Eager PyTorch runs them as two passes over the feature map;
on EfficientNet-Lite0 at 128 px in fp32 the folded trunk took 110 ms a batch of 64 against 220 ms,
with vectors within 2.5e-5 (docs/performance.md, "where the time goes"). In bf16 it gained nothing and
the folded weights' rounding moved the vectors, so `TimmImageEncoder` folds only for fp32.

Pairs are found by running the model once and watching which batch norm reads a convolution's output
directly (timm's `BatchNormAct2d`, a batch norm with its activation, keeps the activation).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Conv2d, str]]:
    """(convolution, name of the batch norm that reads its output and nothing else in between)."""
    convs, pairs, kept = {}, [], []  # kept: the traced tensors stay alive, so their ids stay unique

    def watch(name, module):
        def hook(mod, inputs, output):
            kept.append((inputs[0], output))
            if isinstance(mod, nn.Conv2d):
                convs[id(output)] = mod
            elif id(inputs[0]) in convs:
                pairs.append((convs[id(inputs[0])], name))
        return hook
    hooks = [m.register_forward_hook(watch(n, m)) for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return pairs


def fold_batch_norms(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An eval-mode copy of `model` whose batch norms that directly follow a convolution are folded into
    it (each replaced by its activation, or by nothing); `example` is one input batch for the trace."""
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv, bn_name in _pairs(folded, example):
        bn = modules[bn_name]
        if conv.weight.shape[0] != bn.num_features or not bn.track_running_stats:
            continue
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        with torch.no_grad():
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.ndim - 1))))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
        parent, _, leaf = bn_name.rpartition(".")
        setattr(modules[parent] if parent else folded, leaf, nn.Sequential(*rest) if rest else nn.Identity())
    return folded
