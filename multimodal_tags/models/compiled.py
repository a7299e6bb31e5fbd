"""Encoders' inference through torch.compile: inductor's kernels, with the weights frozen into the graph.

Eager PyTorch runs an encoder one operator at a time; inductor fuses the element-wise work (GELU, layer
norms, the batch norms of a CNN) into the matrix products around it, and with `freezing` it treats the
weights as constants, folds the batch norms and pre-packs the weights for oneDNN. On the 2-core EPYC in
bf16, batches of 64 (docs/performance.md, "the encoders compiled"): MiniLM-L6 at 48 tokens 141 -> 87 ms,
EfficientNet-Lite0 at 128 px 139 -> 66 ms. Compiling costs about 12 s for the text encoder and 20 s for
the CNN, and a job saves about 0.4 ms a text and 0.45 ms a photo: it pays from 30,000-45,000 items (the
Myntra benchmark's 43,000 texts and photos, compiled, gained 5 s and nothing). So `auto` compiles only for
jobs of COMPILE_MIN_ITEMS or more; `on` is for long-running taggers, whose compiling is paid once.

One graph serves every batch: batches are cut to the first batch's size (at least MIN_GRAPH_BATCH) and a
smaller one is padded to it (a CNN compiled with a dynamic batch took minutes to compile); a text
encoder's length stays dynamic.
The first batch is also run eagerly, and a compiled encoder whose vectors do not agree (cosine under
MIN_COSINE) or that fails to compile (no C++ compiler, an unsupported operator) is not used: the
encoder runs eagerly, and says why once.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import COMPILE_MODES

COMPILE_MIN_ITEMS = 50_000  # `auto` compiles for jobs of at least this many texts or photos to encode
MIN_COSINE = 0.99  # as the ONNX Runtime path: the vectors share the eager encoder's cache key
MIN_GRAPH_BATCH = 64  # a job that starts with a few items still gets a graph for full batches


def resolve_compile(mode: str, items: int, device: torch.device | str = "cpu") -> bool:
    """Whether a job of `items` to encode on `device` runs compiled: 'on', 'off', or 'auto' (a CPU job of
    COMPILE_MIN_ITEMS or more; on a GPU 'auto' leaves the encoders eager until measured there)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if mode != "auto":
        return mode == "on"
    return torch.device(device).type == "cpu" and items >= COMPILE_MIN_ITEMS


class CompiledInference:
    """`fn(*tensors) -> [batch, dim]` compiled for inference (no gradients), with `fn` itself as the
    reference and the fallback. `dynamic_dim`: a dimension of the first tensor left dynamic (a text's
    length); every other shape is fixed at the first batch's."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str, dynamic_dim: int | None = None,
                 log: Callable[[str], None] = print):
        self.fn, self.name, self.dynamic_dim, self.log = fn, name, dynamic_dim, log
        self.size: int | None = None  # the batch size the graph was made for
        self.graph: Callable[..., torch.Tensor] | None = None
        self.failed = False

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.fn(*tensors)
        if self.graph is None:
            return self._first(*tensors)
        n = tensors[0].shape[0]
        return torch.cat([self._chunk(*(t[s:s + self.size] for t in tensors)) for s in range(0, n, self.size)])

    def _chunk(self, *tensors: torch.Tensor) -> torch.Tensor:
        """One chunk of at most `size` rows, padded with copies of its last row to exactly `size`."""
        n = tensors[0].shape[0]
        with _frozen():
            return self.graph(*(_padded(t, self.size) for t in tensors))[:n]

    def _first(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Compile on this batch and keep the graph if its vectors agree with eager ones."""
        reference = self.fn(*tensors)
        n = tensors[0].shape[0]
        self.size = max(n, MIN_GRAPH_BATCH)
        try:
            padded = tuple(_padded(t, self.size) for t in tensors)
            for t in padded:  # e.g. the token ids and their mask: both lengths vary together
                if self.dynamic_dim is not None and t.ndim > self.dynamic_dim and t.shape[self.dynamic_dim] > 2:
                    torch._dynamo.mark_dynamic(t, self.dynamic_dim)
            self.graph = torch.compile(self.fn, dynamic=False if self.dynamic_dim is None else None)
            with _frozen():
                out = self.graph(*padded)[:n]
        except Exception as e:  # noqa: BLE001 - inductor raises many kinds; eager always works
            return self._give_up(f"it did not compile ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                                 reference)
        cosine = float(nn.functional.cosine_similarity(out.float(), reference.float()).min())
        if cosine < MIN_COSINE:
            return self._give_up(f"its vectors differ from eager ones (cosine {cosine:.4f})", reference)
        self.log(f"{self.name}: compiled (torch.compile, weights frozen; cosine {cosine:.5f} to eager)")
        return reference

    def _give_up(self, why: str, reference: torch.Tensor) -> torch.Tensor:
        self.log(f"{self.name}: running eagerly: {why}")
        self.failed, self.graph = True, None
        return reference


def _padded(t: torch.Tensor, size: int) -> torch.Tensor:
    """`t` with copies of its last row up to `size` rows, in its memory format (the graph's guards check
    strides: a photo batch is channels-last)."""
    if t.shape[0] >= size:
        return t
    channels_last = t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    padded = torch.cat([t, t[-1:].expand(size - t.shape[0], *t.shape[1:])])
    return padded.contiguous(memory_format=torch.channels_last) if channels_last else padded


def _frozen():
    """Inductor's freezing (weights as constants, batch norms folded, weights pre-packed) for the graphs
    compiled, and recompiled, inside."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)
