"""Fast paths for the text encoder on a CPU, against float32 in the same run: speed and cosine.

    python experiments/text_fast_paths.py --catalog CATALOG --out OUT [--n 512] [--lengths 128 64] [--model MODEL]

For each --lengths value (tokens per text), encodes the same --n texts of the catalog (spread over its
length range) with MiniLM-L6 (or, with --model, that trained model's own text encoder at its own length)
in: float32 (the baseline), bf16 autocast, torch's dynamic int8 quantisation of the Linear layers
(weights per tensor, as `quantize_dynamic` defaults; per output channel; per channel after SmoothQuant's
scaling; only the attention's query, key and value), and, where onnxruntime is installed
(`pip install 'multimodal_tags[onnx]'`), ONNX Runtime in float32 and with int8 weights (the project's
`int8` precision, models/onnx_text.py). Prints
texts/s, the ratio to float32 and to bf16, and the min / mean cosine of each path's vectors to float32's;
a path qualifies as a fast path at min cosine >= 0.999 (vectors must match), an int8 path at >= 0.99
(issue 30). Writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.models.factory import create_text_encoder
from multimodal_tags.models.onnx_text import OrtTextRunner, onnx_available

from experiments.common import markdown_table

MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99
SMOOTH_ALPHA = 0.7  # SmoothQuant's migration strength (0.5 measured worse here: min cosine 0.898)


def spread_texts(texts: list[str], encoder, n: int) -> list[str]:
    """n texts evenly spread over the catalog's token lengths, in length order (what bucketing gives)."""
    lengths = np.array(encoder.token_lengths(texts))
    order = np.argsort(lengths, kind="stable")
    return [texts[i] for i in order[np.linspace(0, len(order) - 1, n).astype(int)]]


def timed(encode, texts: list[str], batch: int = 64) -> tuple[torch.Tensor, float]:
    encode(texts[:batch])  # warm-up
    t0 = time.perf_counter()
    out = torch.cat([encode(texts[s:s + batch]) for s in range(0, len(texts), batch)])
    return out.float(), len(texts) / (time.perf_counter() - t0)


def torch_paths(encoder, calibration: list[str]) -> dict:
    """bf16 autocast and four dynamic int8 variants of `encoder` (calibration: texts for SmoothQuant)."""
    bf16 = copy.deepcopy(encoder).set_precision("bf16")
    paths = {"torch bf16": lambda t: bf16.encode(t).pooled}
    per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
    per_tensor = torch.ao.quantization.default_dynamic_qconfig  # what quantize_dynamic gives every Linear by default
    variants = {"torch int8 dynamic (weights per tensor, every Linear)": (per_tensor, lambda n: True, False),
                "torch int8 dynamic, per channel, every Linear": (per_channel, lambda n: True, False),
                f"torch int8 dynamic, per channel, SmoothQuant alpha {SMOOTH_ALPHA}":
                    (per_channel, lambda n: True, True),
                "torch int8 dynamic, per channel, attention Q/K/V only":
                    (per_channel, lambda n: n.endswith(("query", "key", "value")), False)}
    for name, (qconfig, chosen, smooth) in variants.items():
        paths[name] = _int8(encoder, qconfig, chosen, calibration if smooth else None)
    return paths


class _Smoothed(torch.nn.Module):
    """x -> linear(x / s) with the linear's input columns scaled by s (the same function, fp32)."""

    def __init__(self, linear: torch.nn.Linear, s: torch.Tensor):
        super().__init__()
        self.register_buffer("inverse", 1.0 / s)
        with torch.no_grad():
            linear.weight.mul_(s[None, :])
        self.linear = linear

    def forward(self, x):
        return self.linear(x * self.inverse)


def _int8(encoder, qconfig, chosen, calibration: list[str] | None):
    """encode() of a copy of `encoder` whose `chosen` Linear layers are dynamically quantised to int8;
    with `calibration`, each Linear's input channels are first balanced against its weights (SmoothQuant:
    s = max|x| ** alpha / max|w| ** (1 - alpha), from the calibration texts' activations)."""
    enc = copy.deepcopy(encoder)
    names = [n for n, m in enc.model.named_modules() if isinstance(m, torch.nn.Linear) and chosen(n)]
    if calibration:
        modules, peaks = dict(enc.model.named_modules()), {}

        def record(name):
            def hook(module, inputs, output):
                peak = inputs[0].detach().abs().flatten(0, -2).amax(0)
                peaks[name] = torch.maximum(peaks.get(name, peak), peak)
            return hook
        hooks = [modules[n].register_forward_hook(record(n)) for n in names]
        enc.encode(calibration)
        for h in hooks:
            h.remove()
        for n in names:
            linear = modules[n]
            w = linear.weight.detach().abs().amax(0).clamp(min=1e-5)
            s = (peaks[n].clamp(min=1e-5) ** SMOOTH_ALPHA / w ** (1 - SMOOTH_ALPHA)).clamp(min=1e-2)
            parent, _, leaf = n.rpartition(".")
            setattr(modules[parent], leaf, _Smoothed(linear, s))
    inside = ".linear" if calibration else ""  # smoothed, each Linear now sits inside its _Smoothed
    spec = {n + inside: qconfig for n in names}
    enc.model = torch.ao.quantization.quantize_dynamic(enc.model, spec, dtype=torch.qint8)
    return lambda t: enc.encode(t).pooled


def onnx_paths(encoder) -> dict:
    """The project's ONNX Runtime paths (models/onnx_text.py): fp32, and int8 (precision `int8`); none
    without onnxruntime."""
    if not onnx_available():
        return {}
    sample = encoder.tokenize(["a sample product text", "another one"])
    runners = {"onnxruntime fp32": OrtTextRunner(encoder, sample),
               "onnxruntime int8 (the project's `int8` precision)": OrtTextRunner(encoder, sample, int8=True)}

    def run(runner):
        def encode(texts):
            tok = encoder.tokenize(texts)
            return runner(tok["input_ids"], tok["attention_mask"])
        return encode
    return {name: run(r) for name, r in runners.items()}


def measure(texts: list[str], calibration: list[str], encoder) -> list[dict]:
    """One row per path: texts/s, ratios to fp32 and bf16, cosine to fp32 over `texts`."""
    length = encoder.max_length
    sample = spread_texts(texts, encoder, len(texts))
    base, base_rate = timed(lambda t: encoder.encode(t).pooled, sample)
    rows = [{"path": "torch fp32 (baseline)", "tokens": length, "texts_per_s": round(base_rate, 1), "vs_fp32": 1.0,
             "min_cosine": 1.0, "mean_cosine": 1.0}]
    for name, encode in {**torch_paths(encoder, calibration), **onnx_paths(encoder)}.items():
        vectors, rate = timed(encode, sample)
        cos = torch.nn.functional.cosine_similarity(base, vectors)
        rows.append({"path": name, "tokens": length, "texts_per_s": round(rate, 1), "vs_fp32": round(rate / base_rate, 2),
                     "min_cosine": round(float(cos.min()), 5), "mean_cosine": round(float(cos.mean()), 5)})
    bf16_rate = next(r["texts_per_s"] for r in rows if r["path"] == "torch bf16")
    for r in rows:
        r["vs_bf16"] = round(r["texts_per_s"] / bf16_rate, 2)
    return rows


def text_encoder(model: Path | None, length: int):
    """MiniLM-L6 at `length` tokens, or the text encoder of a trained model folder (its own length), fp32."""
    if model is None:
        return create_text_encoder("minilm-l6", length).eval().set_precision("fp32")
    from multimodal_tags.features import RunConfig
    from multimodal_tags.models.tagger import Tagger
    return RunConfig(precision="fp32").encoders_for(Tagger.load(model).cfg).text.eval()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--model", type=Path, help="a trained model folder: its own text encoder, at its own length")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    products = read_catalog(a.catalog).products
    everything = [p.text for p in products if p.text]
    chosen = np.linspace(0, len(everything) - 1, min(a.n, len(everything))).astype(int)
    texts = [everything[i] for i in chosen]
    calibration = [t for i, t in enumerate(everything) if i not in set(chosen)][:256] or texts[:64]
    lengths = [None] if a.model else a.lengths
    rows = [r for length in lengths for r in measure(texts, calibration, text_encoder(a.model, length))]
    for r in rows:
        r["qualifies"] = r["min_cosine"] >= MIN_COSINE
        r["qualifies_int8"] = r["min_cosine"] >= INT8_MIN_COSINE
    results = {"device": f"cpu ({torch.get_num_threads()} threads)", "texts": len(texts),
               "encoder": str(a.model) if a.model else "minilm-l6", "rows": rows}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(markdown_table([{"path": r["path"], "tokens": r["tokens"], "texts/s": r["texts_per_s"],
                           "vs fp32": f"{r['vs_fp32']}x", "vs bf16": f"{r['vs_bf16']}x", "min cosine": r["min_cosine"],
                           "mean cosine": r["mean_cosine"], "fast path (0.999)": "yes" if r["qualifies"] else "no",
                           "int8 (0.99)": "yes" if r["qualifies_int8"] else "no"} for r in rows]))
    return results


if __name__ == "__main__":
    main()
