"""Tag decoding speed on a trained model: the project's `generate` (finished rows leave the batch), the
same with every row kept to the last step, and transformers' own `generate`, on the same fused vectors.

    python experiments/decode_speed.py --model MODEL --catalog CATALOG --cache CACHE --out OUT [--n 2048]

The fused vectors of the first --n test products (features from the cache, encoding what it lacks) are
computed once; each decoding path then runs over them in batches of --batch. Prints products/s, the ratio
to transformers' `generate` (the baseline) and whether the tags are the same; writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features import FeatureSource, RunConfig
from multimodal_tags.models.tagger import Tagger

from experiments.common import markdown_table


def fused_batches(model: Tagger, catalog: Path, cache: Path, n: int, size: int) -> list[tuple[torch.Tensor, object]]:
    """(fused vectors, tag bias) of the first n test products, in batches of `size`."""
    cat = read_catalog(catalog)
    products = [p for p in cat.products if p.split == "test"][:n]
    with FeatureCache(cache) as fc:
        source = FeatureSource.encode(products, RunConfig().encoders_for(model.cfg), fc, cat.image_root, model.cfg)
    out = []
    with torch.no_grad():
        for s in range(0, len(products), size):
            forward = model.eval()(source.subset(range(s, min(s + size, len(products)))).batch())
            out.append((forward["fused"], forward["tag_bias"]))
    return out


def timed(decode, batches) -> tuple[list, float]:
    decode(*batches[0])  # warm-up
    t0, tags = time.perf_counter(), []
    for fused, bias in batches:
        tags += [[t for t, _ in g] for g in decode(fused, bias)]
    return tags, sum(len(f) for f, _ in batches) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    model = Tagger.load(a.model)
    batches = fused_batches(model, a.catalog, a.cache, a.n, a.batch)
    dec = model.decoder
    paths = {"transformers generate (baseline)": lambda f, b: dec.generate_stock(f, tag_bias=b),
             "project generate, every row to the last step": lambda f, b: dec.generate(f, tag_bias=b, early_exit=False),
             "project generate, finished rows leave": lambda f, b: dec.generate(f, tag_bias=b)}
    results = {name: timed(decode, batches) for name, decode in paths.items()}
    base_tags, base_rate = results["transformers generate (baseline)"]
    rows = [{"path": name, "products_per_s": round(rate, 1), "vs_baseline": round(rate / base_rate, 2),
             "same_tags": tags == base_tags} for name, (tags, rate) in results.items()]
    a.out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(a.model), "products": sum(len(f) for f, _ in batches), "batch": a.batch,
               "threads": torch.get_num_threads(), "rows": rows,
               "mean_tags": sum(map(len, base_tags)) / max(len(base_tags), 1)}
    (a.out / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(markdown_table([{"decoding path": r["path"], "products/s": r["products_per_s"],
                           "vs transformers": f"{r['vs_baseline']}x", "same tags": r["same_tags"]} for r in rows]))
    return summary


if __name__ == "__main__":
    main()
