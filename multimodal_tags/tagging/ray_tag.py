"""`mmtags tag --engine ray`: a catalog tagged by a pool of Ray actors (optional extra: `.[ray]`).

The driver reads and validates the catalog as `mmtags tag` does (rejects by file, row and field) and
hands the valid products to Ray Data in parts of `PART_SIZE`. Each part runs through `map_batches` on a
pool of actors, each holding one model (a GPU each where the cluster has GPUs; the encoders run inside
them when the feature cache lacks a product), in the catalog's order, and is written as its own file
`OUT.ray-parts/part-NNNNNN.jsonl`. A rerun skips the parts already written. When all are there they
are concatenated into OUT: the same bytes one process writes. The store, if given, is filled from OUT.

On one machine this starts a local Ray instance with `workers` CPUs; with RAY_ADDRESS set (or
`ray start` run on the cluster), it joins that cluster instead.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..data.catalog import DiskIdIndex, ReadReport, image_root_for, iter_catalog
from ..data.schema import Product
from ..features.settings import RunConfig
from ..files import replacing
from ..inference.batch_tagger import BatchTagger
from .tag_store import TagStore
from .tag_job import TagStats, _write_issues, batches, sync_store

PART_SIZE = 50_000  # products per part file: the unit of resume (rounded up to whole batches: part_size)


class TagActor:
    """One model in one Ray actor: a batch of product JSON strings in, their output lines out."""

    def __init__(self, model_dir: str, cache_dir: str, tag_source: str, image_root: str, allow_random: bool):
        settings = RunConfig(cache_dir=cache_dir, allow_random_weights=allow_random, progress=False,
                               log=lambda s: None)
        self.tagger = BatchTagger(model_dir, Path(cache_dir), settings, tag_source)
        self.root = Path(image_root)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        products = [Product.from_dict(json.loads(s)) for s in batch["product"]]
        rows = self.tagger.tag(products, self.root)
        return {"line": np.array([json.dumps(r, ensure_ascii=False) for r in rows], dtype=object)}


def _start_ray(workers: int) -> None:
    import ray

    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "MMTAGS_", "TOKENIZERS_"))}
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env})
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # output in catalog order
    ray.data.DataContext.get_current().enable_progress_bars = False


def part_size(batch_size: int) -> int:
    """PART_SIZE rounded up to a whole number of batches, so that every batch holds the products it holds in
    one process: a batch of another size can round differently in the last bit (the CPU's kernels are
    chosen by shape), and OUT must be the bytes one process writes."""
    return -(-PART_SIZE // batch_size) * batch_size


def _tag_part(part: list[Product], path: Path, actor_args: dict, workers: int, batch_size: int) -> int:
    """Tag one part on the actor pool into `path` (written whole, then renamed); returns its lines."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    ds = ray.data.from_items([{"product": json.dumps(p.to_dict(), ensure_ascii=False)} for p in part])
    ds = ds.map_batches(TagActor, fn_constructor_kwargs=actor_args, batch_size=batch_size, batch_format="numpy",
                        concurrency=workers, num_gpus=gpus)
    lines = 0
    with replacing(path) as f:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            f.write("".join(line + "\n" for line in batch["line"]).encode("utf-8"))
            lines += len(batch["line"])
        if lines != len(part):
            raise RuntimeError(f"Ray returned {lines} rows for a part of {len(part)} products")
    return lines


def tag_catalog_ray(model_dir: str | Path, catalog_path: Path, out: Path, store_path: str | Path | None,
                    settings: RunConfig, options, rejects_path: str | Path | None, workers: int = 2):
    """Tag the catalog with Ray Data into `out` (and the store); returns the job's TagStats."""
    if options.extra_tags:
        raise ValueError("--extra-tags is not supported with --engine ray yet; tag with the local engine")
    parts_dir = out.with_name(out.name + ".ray-parts")
    if out.exists() and not parts_dir.exists():
        raise ValueError(f"{out} exists and has no {parts_dir.name} of an unfinished Ray run: write to a new --out")
    _start_ray(workers)
    stats, t0 = TagStats(), time.perf_counter()
    root = image_root_for(catalog_path, options.image_root)
    actor_args = {"model_dir": str(Path(model_dir).resolve()), "cache_dir": str(settings.cache_for(catalog_path)),
                  "tag_source": options.tag_source, "image_root": str(root),
                  "allow_random": settings.allow_random_weights}
    parts_dir.mkdir(parents=True, exist_ok=True)
    report, seen = ReadReport(str(catalog_path)), DiskIdIndex()
    try:
        with open(rejects_path or f"{out}.rejects.jsonl", "w", encoding="utf-8") as rejects:
            products = iter_catalog(catalog_path, root, options.limits, report, seen=seen)
            for n, part in enumerate(batches(products, part_size(options.batch_size))):
                _write_issues(report, rejects)
                path = parts_dir / f"part-{n:06d}.jsonl"
                if path.exists():  # written by an earlier run
                    stats.resumed_after += len(part)
                    continue
                stats.tagged += _tag_part(part, path, actor_args, workers, options.batch_size)
                settings.log(f"part {n}: {stats.tagged + stats.resumed_after} products tagged")
            _write_issues(report, rejects)
    finally:
        seen.close()
    _concatenate(sorted(parts_dir.glob("part-*.jsonl")), out)
    shutil.rmtree(parts_dir)
    if store_path and stats.tagged + stats.resumed_after:
        with TagStore(store_path) as store:
            sync_store(out, stats.tagged + stats.resumed_after, store, options.batch_size,
                       iter_catalog(catalog_path, root, options.limits))
    stats.read, stats.kept, stats.rejected = report.read, report.kept, report.rejected
    stats.seconds = time.perf_counter() - t0
    return stats


def _concatenate(parts: list[Path], out: Path) -> None:
    with replacing(out) as f:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f)
