"""Fast paths for the text encoder on a CPU, against float32 in the same run: speed and cosine.

    python experiments/text_fast_paths.py --catalog CATALOG --out OUT [--n 512] [--lengths 128 64]

For each --lengths value (tokens per text), encodes the same --n texts of the catalog (spread over its
length range) with MiniLM-L6 in: float32 (the baseline), bf16 autocast, torch's dynamic int8
quantisation of every Linear, and, where onnxruntime is installed (`pip install 'multimodal_tags[onnx]'`),
ONNX Runtime in float32 and with per-channel dynamic int8. Prints texts/s, the ratio to float32 and the
min / mean cosine of each path's vectors to float32's; a path qualifies as a fast path only at min
cosine >= 0.999 (issue: vectors must match). Writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.models.factory import create_text_encoder

from experiments.common import markdown_table

MIN_COSINE = 0.999


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


def torch_paths(encoder) -> dict:
    bf16 = copy.deepcopy(encoder).set_precision("bf16")
    int8 = copy.deepcopy(encoder)
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    return {"torch bf16": lambda t: bf16.encode(t).pooled, "torch int8 dynamic": lambda t: int8.encode(t).pooled}


def onnx_paths(encoder, folder: Path) -> dict:
    """ONNX Runtime sessions of the encoder (float32, and int8 per channel); none without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return {}

    class Pooled(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, ids, mask):
            return self.enc(ids, mask).pooled

    sample = encoder.tokenize(["a sample product text", "another one"])
    fp32, int8 = folder / "text.onnx", folder / "text-int8.onnx"
    axes = {"ids": {0: "batch", 1: "tokens"}, "mask": {0: "batch", 1: "tokens"}, "pooled": {0: "batch"}}
    torch.onnx.export(Pooled(encoder), (sample["input_ids"], sample["attention_mask"]), str(fp32), dynamo=False,
                      input_names=["ids", "mask"], output_names=["pooled"], dynamic_axes=axes, opset_version=17)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": 1})  # 1: float, where shape inference gives no type
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()

    def run(path: Path):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def encode(texts):
            tok = encoder.tokenize(texts)
            ids, mask = tok["input_ids"].numpy(), tok["attention_mask"].numpy()
            return torch.from_numpy(session.run(None, {"ids": ids, "mask": mask})[0])
        return encode
    return {"onnxruntime fp32": run(fp32), "onnxruntime int8 per-channel": run(int8)}


def measure(texts: list[str], length: int, folder: Path) -> list[dict]:
    encoder = create_text_encoder("minilm-l6", length).eval().set_precision("fp32")
    sample = spread_texts(texts, encoder, len(texts))
    base, base_rate = timed(lambda t: encoder.encode(t).pooled, sample)
    rows = [{"path": "torch fp32 (baseline)", "tokens": length, "texts_per_s": round(base_rate, 1), "vs_fp32": 1.0,
             "min_cosine": 1.0, "mean_cosine": 1.0}]
    for name, encode in {**torch_paths(encoder), **onnx_paths(encoder, folder)}.items():
        vectors, rate = timed(encode, sample)
        cos = torch.nn.functional.cosine_similarity(base, vectors)
        rows.append({"path": name, "tokens": length, "texts_per_s": round(rate, 1), "vs_fp32": round(rate / base_rate, 2),
                     "min_cosine": round(float(cos.min()), 5), "mean_cosine": round(float(cos.mean()), 5)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 64])
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    products = read_catalog(a.catalog).products
    texts = [p.text for p in products if p.text]
    texts = [texts[i] for i in np.linspace(0, len(texts) - 1, min(a.n, len(texts))).astype(int)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for length in a.lengths for r in measure(texts, length, Path(tmp))]
    for r in rows:
        r["qualifies"] = r["min_cosine"] >= MIN_COSINE
    results = {"device": f"cpu ({torch.get_num_threads()} threads)", "texts": len(texts), "rows": rows}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(markdown_table([{"path": r["path"], "tokens": r["tokens"], "texts/s": r["texts_per_s"],
                           "vs fp32": f"{r['vs_fp32']}x", "min cosine": r["min_cosine"], "mean cosine": r["mean_cosine"],
                           "qualifies": "yes" if r["qualifies"] else "no"} for r in rows]))
    return results


if __name__ == "__main__":
    main()
