"""Helper of experiments/feedback_simulation.py: train a model that has never seen one tag (the "new tag" case).

    python experiments/feedback_model.py --model MODEL_DIR --out OUT --tag "sleeve length:short sleeves"

trains OUT/new_tag_model/ (reused when present) with MODEL_DIR's config and the benchmark's training
settings, on the catalog with the tag removed from every product and from the vocabulary.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from multimodal_tags.data.catalog import read_catalog, write_catalog
from multimodal_tags.features import RunConfig
from multimodal_tags.models.tagger import Tagger
from multimodal_tags.train.job import train_tagger

from experiments.common import bench_train_config, benchmark_catalog, default_cache


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
    train_tagger(without_tag(catalog, tag, out), run, cfg, bench_train_config(),
                 RunConfig(cache_dir=cache, progress=False, log=log), resume=True)
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
