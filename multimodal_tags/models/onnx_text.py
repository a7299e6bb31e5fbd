"""ONNX Runtime for a text encoder on a CPU: its fp32 graph, or that graph with int8 weights.

- fp32, opt-in: `MMTAGS_ONNX=1` (with the `onnx` extra installed). On this 2-core AMD EPYC, on a quiet
  machine, ONNX Runtime ran MiniLM-L6's float32 graph at 0.92x torch's speed (docs/performance.md), so it
  is off by default. On other CPUs it may win: measure first.
- int8: precision `int8` (`--precision int8`, or MMTAGS_PRECISION=int8). The exported graph's MatMul
  weights are quantised per output channel, activations per batch (ONNX Runtime's dynamic quantisation),
  but for the feed-forward output projections (`KEEP_FP32`). On the benchmark's fine-tuned MiniLM at 48
  tokens: 2.8x torch fp32 and 0.94-1.26x torch bf16 on this CPU (so `auto` stays bf16 where the CPU
  has it), cosine to fp32 0.9938 at worst over 1,024 test texts (`experiments/text_fast_paths.py --model`).
`OrtTextRunner` exports the encoder (transformer + mean pooling) once per process and runs it; the first
batch is also run by torch in fp32. fp32's runner is used only if every vector agrees within cosine
`MIN_COSINE`, else it steps aside with a message; int8's below `INT8_MIN_COSINE` stops the run with an
error (its vectors would be cached under the int8 key).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

MIN_COSINE = 0.99999  # fp32 in both: only float rounding may differ
INT8_MIN_COSINE = 0.99  # int8 weights: the bar for keeping an int8 path (tag F1 checked apart)


#: Graph nodes left in fp32 by the int8 path: a BERT layer's feed-forward output projection (HF names it
#: `layer.N/output/dense`, the attention's own is `attention/output/dense`). Its input, after GELU, has the
#: widest range of any MatMul input, so one int8 scale per batch loses it most. On the benchmark's MiniLM,
#: 1,024 test texts, one probe: min cosine 0.9891 with every MatMul in int8, 0.9947 with these kept (10%
#: slower); keeping the first projection instead gave 0.9841.
KEEP_FP32 = re.compile(r"layer\.\d+/output/dense/")


def onnx_available() -> bool:
    """Whether the exporter (onnx) and the runtime (onnxruntime) are installed."""
    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None


def onnx_wanted(precision: str, device: torch.device) -> bool:
    """Whether CPU inference should go through ONNX Runtime: int8 (always), or fp32 asked for
    (MMTAGS_ONNX=1); and installed."""
    asked = precision == "int8" or (precision == "fp32" and os.environ.get("MMTAGS_ONNX", "0") == "1")
    return asked and device.type == "cpu" and onnx_available()


class _Pooled(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask).pooled


class OrtTextRunner:
    """A text encoder's pooled vectors through ONNX Runtime (CPU; float32, or int8 weights)."""

    def __init__(self, encoder, sample: dict[str, torch.Tensor], int8: bool = False):
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
        if int8:
            path = _quantised(path)
        self.min_cosine = INT8_MIN_COSINE if int8 else MIN_COSINE
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


def _quantised(path: Path) -> Path:
    """The ONNX graph at `path` with int8 weights per output channel (dynamic quantisation), beside it;
    the feed-forward blocks' second projections stay fp32 (`KEEP_FP32`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.stem + "-int8.onnx")
    keep = [n.name for n in onnx.load(str(path)).graph.node if KEEP_FP32.search(n.name)]
    logging.disable(logging.WARNING)  # its advice to pre-process the graph: shape inference fails on ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=keep, extra_options={"DefaultTensorType": 1})  # 1: float where untyped
    finally:
        logging.disable(logging.NOTSET)
    return out
