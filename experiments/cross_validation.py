"""k-fold cross-validation of a preset on a catalog's train+val products (test is never touched).

    python experiments/cross_validation.py --catalog runs/myntra/catalog.jsonl --folds 5 --out runs/cv

Folds come from a hash of the product id (stable across runs); each fold trains on the others and is
scored on itself, and the table reports mean and standard deviation over folds: how much a score
moves with the data it was measured on, which a single val split cannot say.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
from pathlib import Path

from multimodal_tags.config import TrainConfig
from multimodal_tags.data.catalog import read_catalog, write_catalog
from multimodal_tags.features import RunConfig, default_cache_dir
from multimodal_tags.models.presets import get_preset
from multimodal_tags.train.job import train_tagger

from experiments.common import markdown_table

METRICS = ("category_accuracy", "tags_micro_f1", "tags_macro_f1")


def fold_of(product_id: str, folds: int) -> int:
    return int(hashlib.sha256(product_id.encode()).hexdigest()[:8], 16) % folds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--cache", help="feature cache (default: beside the catalog)")
    ap.add_argument("--modalities", default="both")
    ap.add_argument("--allow-random-weights", action="store_true")
    a = ap.parse_args(argv)
    if a.folds < 2:
        ap.error("--folds must be at least 2")
    out = Path(a.out)
    catalog = read_catalog(a.catalog)
    pool = [p for p in catalog.products if p.split in ("train", "val")]
    cache = a.cache or default_cache_dir(a.catalog)
    meta = dict(catalog.meta, image_root=str(catalog.image_root))
    per_fold = []
    for f in range(a.folds):
        fold_products = [dataclasses.replace(p, split="val" if fold_of(p.id, a.folds) == f else "train") for p in pool]
        fold_catalog = out / f"fold{f}" / "catalog.jsonl"
        write_catalog(fold_products, fold_catalog, meta=meta)
        result = train_tagger(fold_catalog, out / f"fold{f}", get_preset(a.preset),
                              TrainConfig(epochs=a.epochs, batch_size=a.batch_size, patience=3),
                              RunConfig(cache_dir=cache, allow_random_weights=a.allow_random_weights,
                                          log=lambda s: None), modalities=a.modalities)
        per_fold.append(result["metrics"]["val"])
        print(f"fold {f}: " + ", ".join(f"{src} {m}={result['metrics']['val'][src][m]:.4f}"
                                        for src in result["metrics"]["val"] for m in METRICS[:2]))
    summary = {}
    for src in per_fold[0]:
        summary[src] = {m: {"mean": statistics.mean(fm[src][m] for fm in per_fold),
                            "std": statistics.stdev(fm[src][m] for fm in per_fold)} for m in METRICS}
    print(markdown_table([{"tags from": src, **{m: f"{ms[m]['mean']:.4f} ± {ms[m]['std']:.4f}" for m in METRICS}}
                          for src, ms in summary.items()]))
    (out / "cv.json").write_text(json.dumps({"folds": per_fold, "summary": summary}, indent=1), encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
