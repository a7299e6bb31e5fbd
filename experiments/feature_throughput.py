"""Encoding throughput of the offline default encoders: fp32 (baseline) vs the default 'auto' precision.

    python experiments/feature_throughput.py --catalog runs/myntra/catalog.jsonl --n 512

Encodes the first N products of a catalog into a throw-away cache, once per precision, and prints
products/s and the ratio to the fp32 baseline measured in the same run, plus the cosine similarity
between the two precisions' vectors (what the speed costs in fidelity).
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features import EncoderSet, encode_images, encode_texts, load_features


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--text-encoder", default="minilm-l6")
    ap.add_argument("--image-encoder", default="effnet-lite0")
    a = ap.parse_args(argv)
    catalog = read_catalog(a.catalog)
    products, root = catalog.products[:a.n], catalog.image_root
    results = {}
    for precision in ("fp32", "auto"):
        encoders = EncoderSet(a.text_encoder, a.image_encoder, precision=precision)
        te, ie = encoders.text, encoders.image
        with tempfile.TemporaryDirectory() as tmp, FeatureCache(tmp) as cache:
            t = encode_texts(products, te, cache, progress=False)
            i = encode_images(products, ie, cache, root, progress=False)
            feats = load_features(products, cache, te.cache_key(), ie.cache_key())
        results[precision] = {"resolved": te.precision, "text_per_s": t.per_second, "image_per_s": i.per_second,
                              "text": feats["text"], "image": feats["image"][feats["has_image"]]}
    base, fast = results["fp32"], results["auto"]
    print(f"{len(products)} products; 'auto' resolved to {fast['resolved']}")
    print(f"{'':8s}{'fp32 /s':>10s}{'auto /s':>10s}{'ratio':>8s}{'min cos':>9s}")
    for m in ("text", "image"):
        ratio = fast[f"{m}_per_s"] / base[f"{m}_per_s"]
        print(f"{m:8s}{base[f'{m}_per_s']:10.1f}{fast[f'{m}_per_s']:10.1f}{ratio:8.2f}x{_cosine(base[m], fast[m]):9.4f}")
    return {m: fast[f"{m}_per_s"] / base[f"{m}_per_s"] for m in ("text", "image")}


if __name__ == "__main__":
    main()
