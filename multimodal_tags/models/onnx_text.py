"""ONNX Runtime for a text encoder's fp32 inference on a CPU: the same function, through another runtime.

Opt-in: `MMTAGS_ONNX=1` (with the `onnx` extra installed). On this 2-core AMD EPYC, on a quiet machine,
ONNX Runtime ran MiniLM-L6's float32 graph at 0.92x torch's speed (docs/performance.md), so it is off by
default; an earlier reading of 1.25x was taken beside another job. On other CPUs it may win: measure first.
`OrtTextRunner` exports the encoder (transformer + mean pooling) once per process and runs it; the first
batch is also run by torch, and the runner is used only if every vector agrees within cosine `MIN_COSINE`,
else it steps aside with a message. Int8 paths are not offered: none kept cosine 0.999.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

MIN_COSINE = 0.99999  # fp32 in both: only float rounding may differ


def onnx_wanted(precision: str, device: torch.device) -> bool:
    """Whether fp32 CPU inference should go through ONNX Runtime: asked for (MMTAGS_ONNX=1) and installed."""
    if precision != "fp32" or device.type != "cpu" or os.environ.get("MMTAGS_ONNX", "0") != "1":
        return False
    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None  # the exporter needs onnx


class _Pooled(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask).pooled


class OrtTextRunner:
    """A text encoder's pooled vectors through ONNX Runtime (CPU, float32)."""

    def __init__(self, encoder, sample: dict[str, torch.Tensor]):
        import onnxruntime as ort

        self._folder = tempfile.TemporaryDirectory(prefix="mmtags-onnx-")
        path = Path(self._folder.name) / "text.onnx"
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "pooled": {0: "batch"}}
        with warnings.catch_warnings():  # the exporter's tracer warnings are about shapes it makes dynamic
            warnings.simplefilter("ignore")
            torch.onnx.export(_Pooled(encoder).eval(), (sample["input_ids"], sample["attention_mask"]), str(path),
                              dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["pooled"],
                              dynamic_axes=axes, opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # idle ORT threads would otherwise spin and take the cores from torch's work between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def agrees(self, reference: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
        """The lowest cosine between this runner's vectors and `reference` (torch's) for one batch."""
        return float(nn.functional.cosine_similarity(self(input_ids, attention_mask), reference.float()).min())
