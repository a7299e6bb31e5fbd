"""Helpers of experiments/feedback_simulation.py: find the benchmark's catalog and cache beside its model
folder, and train a model that has never seen one tag (the "new tag" case).

    python experiments/feedback_model.py --model MODEL_DIR --out OUT --tag "sleeve length:short sleeves"

trains OUT/new_tag_model/ (reused when present) with MODEL_DIR's config and the benchmark's training
settings, on the catalog with the tag removed from every product and from the vocabulary.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from multimodal_tags.config import TrainConfig
from multimodal_tags.data.catalog import read_catalog, write_catalog
from multimodal_tags.data.importers import myntra, run_import
from multimodal_tags.features import RunSettings
from multimodal_tags.models.tagger import Tagger
from multimodal_tags.train.job import train_tagger

# the benchmark's training settings (experiments/myntra_benchmark.py)
BENCH_TRAIN = TrainConfig(epochs=8, batch_size=256, lr=1e-3, patience=3)


def benchmark_catalog(model_dir: Path, data: Path | None, out: Path, log=print) -> Path:
    """The catalog the model was trained on: the benchmark's, beside its model folder; else imported
    from `data` into OUT."""
    beside = model_dir.resolve().parent / "catalog.jsonl"
    if beside.exists():
        return beside
    if data is None:
        raise SystemExit(f"no catalog beside {model_dir}: pass --data ../shared/datasets/fashion-myntra")
    path = out / "catalog.jsonl"
    if not path.exists():
        log(run_import(myntra.read(data), path).report.summary())
    return path


def default_cache(model_dir: Path, catalog: Path) -> Path:
    """The feature cache the benchmark filled (features-cache beside its model), else beside the catalog."""
    beside = model_dir.resolve().parent / "features-cache"
    return beside if beside.exists() else catalog.resolve().parent / "features-cache"


def without_tag(catalog: Path, tag: str, out: Path) -> Path:
    """A copy of the catalog in which no product has `tag` and the vocabulary lacks it."""
    path = out / "catalog-without-tag.jsonl"
    if path.exists():
        return path
    cat = read_catalog(catalog)
    products = [dataclasses.replace(p, tags=[t for t in p.tags if t != tag]) for p in cat.products]
    meta = dict(cat.meta)
    if meta.get("tag_vocab"):
        meta["tag_vocab"] = [t for t in meta["tag_vocab"] if t != tag]
    meta["image_root"] = str(cat.image_root)
    write_catalog(products, path, meta=meta)
    return path


def train_without_tag(model_dir: Path, catalog: Path, tag: str, out: Path, cache: Path, log=print) -> Path:
    """OUT/new_tag_model/model: MODEL_DIR's architecture trained on the catalog without `tag` (reused)."""
    run = out / "new_tag_model"
    if (run / "model" / "config.json").exists():
        return run / "model"
    cfg = Tagger.load(model_dir).cfg  # its text encoder resolved inside MODEL_DIR
    train_tagger(without_tag(catalog, tag, out), run, cfg, BENCH_TRAIN,
                 RunSettings(cache_dir=cache, progress=False, log=log), resume=True)
    return run / "model"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--tag", default="sleeve length:short sleeves")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    catalog = benchmark_catalog(a.model, a.data, a.out)
    print(train_without_tag(a.model, catalog, a.tag, a.out, a.cache or default_cache(a.model, catalog)))


if __name__ == "__main__":
    main()
