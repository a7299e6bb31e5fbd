"""What every encoder shares: its output, its identity (for the feature cache) and the weights error."""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from .compiled import CompiledInference, resolve_compile


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for and could not be loaded; the message says how to supply them."""


@dataclass
class EncoderOutput:
    pooled: torch.Tensor  # [batch, dim]
    tokens: torch.Tensor | None = None  # [batch, seq, width]: text tokens or image patches
    mask: torch.Tensor | None = None  # [batch, seq], 1 for real tokens (text only)


def state_dict_hash(module: nn.Module) -> str:
    """Hash of the parameters and buffers actually loaded: two encoders with equal hashes compute
    the same function, whatever file or hub name they came from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def resolve_precision(precision: str, device: torch.device | str = "cpu", allow_int8: bool = False) -> str:
    """'auto' -> 'bf16' where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16 or
    AMX; `experiments/feature_throughput.py` measures speed and cosine against fp32), else 'fp32'.
    The environment variable MMTAGS_PRECISION, when set, is what 'auto' means (MMTAGS_PRECISION=fp32:
    run as on a CPU without bf16, everywhere 'auto' is asked, training included). 'int8' is the text
    encoders' (ONNX Runtime on a CPU, models/onnx_text.py): where not `allow_int8`, it means 'auto'
    (MMTAGS_PRECISION=fp32 with --precision int8: int8 text, fp32 photos, as on a CPU without bf16)."""
    env = os.environ.get("MMTAGS_PRECISION")
    if precision == "auto" and env:
        precision = env
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision {precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    if precision == "int8" and not allow_int8:
        precision = env if env in ("fp32", "bf16", "fp16") else "auto"
    return hardware_precision(device) if precision == "auto" else precision


def hardware_precision(device: torch.device | str = "cpu") -> str:
    """The fastest float precision the device runs natively: bf16 (or fp16 on CUDA without bf16) or fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    cpu = torch.cpu
    fast = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if device.type == "cpu" and fast else "fp32"


class Encoder(nn.Module):
    """Base for text and image encoders.

    `spec` is how the user named it, `dim` the pooled width, `random_weights` whether it was built
    untrained on purpose. `cache_key` changes whenever the vectors could change: other weights, other
    preprocessing, other spec.
    """

    spec: str
    dim: int
    random_weights: bool = False
    precision: str = "fp32"  # inference precision of `encode` and the feature job; part of the cache key

    def set_precision(self, precision: str) -> "Encoder":
        """Inference precision; 'int8' only where an encoder has an int8 path (elsewhere it means 'auto')."""
        self.precision = resolve_precision(precision, self.device, allow_int8=self.has_int8)
        return self

    has_int8 = False  # whether `encode` has an int8 path (the text encoders on a CPU, through ONNX Runtime)

    compile_mode: str = "off"  # torch.compile for inference (models/compiled.py): auto, on or off
    compiled_dynamic_dim: int | None = None  # an input dimension the compiled graph leaves dynamic
    _compiled: CompiledInference | None = None

    def set_compile(self, mode: str) -> "Encoder":
        """Whether jobs run this encoder compiled (auto, on, off); `expect` decides per job."""
        resolve_compile(mode, 0)  # checks the name
        self.compile_mode, self._compiled = mode, None
        return self

    def expect(self, items: int) -> None:
        """Told that a job is about to encode `items` texts or photos: compiles the inference where
        `compile_mode` says so for a job that size (kept for later jobs)."""
        if self._compiled is None and self.supports_compile and resolve_compile(self.compile_mode, items, self.device):
            self._compiled = CompiledInference(self.compiled_part, self.spec, self.compiled_dynamic_dim)

    supports_compile = False  # subclasses that define `compiled_part` for CompiledInference

    def compiled_part(self, *tensors: torch.Tensor) -> torch.Tensor:
        """What CompiledInference compiles, from preprocessed inputs: the pooled vectors (a wrapper such as
        ColourDescribed: its own part of them)."""
        raise NotImplementedError

    def compiled_runner(self) -> CompiledInference | None:
        """The compiled inference, where `expect` made one and this is inference (eval, no gradients)."""
        if self._compiled is None or self.training or torch.is_grad_enabled():
            return None
        return self._compiled

    @contextlib.contextmanager
    def eager(self):
        """Inference as eager PyTorch runs it, for comparisons: the compiled graphs of this encoder and of
        the encoders inside it are set aside meanwhile, then kept as they were."""
        inner = [m for m in self.modules() if isinstance(m, Encoder)]
        kept = [m._compiled for m in inner]
        for m in inner:
            m._compiled = None
        try:
            yield self
        finally:
            for m, compiled in zip(inner, kept):
                m._compiled = compiled

    def train(self, mode: bool = True) -> "Encoder":
        if mode:  # weights may change: the frozen graph would keep the old ones
            self._compiled = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._compiled = None  # another device or dtype: the frozen graph holds the old weights
        return super()._apply(fn, *args, **kwargs)

    def autocast(self):
        """Context for torch inference at `self.precision` (no-op for fp32, and for int8, whose int8 path
        is not torch's: what torch computes, it computes in fp32)."""
        if self.precision in ("fp32", "int8"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def preprocessing_id(self) -> str:
        raise NotImplementedError

    def weights_id(self) -> str:
        if not hasattr(self, "_weights_id"):
            self._weights_id = state_dict_hash(self)
        return self._weights_id

    def cache_id(self) -> str:
        """What names the encoder in its cache key, besides its weights and preprocessing."""
        return self.spec

    def cache_key(self) -> str:
        ident = f"{self.cache_id()}|{self.weights_id()}|{self.preprocessing_id()}|{self.precision}"
        return hashlib.sha256(ident.encode()).hexdigest()[:20]

    def describe(self) -> dict:
        return {"spec": self.spec, "dim": self.dim, "weights_id": self.weights_id(),
                "preprocessing": self.preprocessing_id(), "precision": self.precision, "random_weights": self.random_weights,
                "parameters": sum(p.numel() for p in self.parameters())}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def default_device() -> str:
    """'cuda' where a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"
