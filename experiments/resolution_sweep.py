"""Photo resolution against tag quality and speed: the Myntra benchmark's frozen fused model at each size.

    python experiments/resolution_sweep.py --data ../shared/datasets/fashion-myntra --out OUT [--cache CACHE]

Myntra's photos are 60x80 (a fifth have a 224 px version); EfficientNet-Lite0's default input is 224 x 224.
For each --sizes value this (1) times encoding 512 test photos from their files, in fp32 and at
`--precision auto`, into a throw-away cache, and (2) trains the benchmark's "fused, frozen" model with
photos at that size (same recipe, same seed; two trainings at a time) and scores it on test, fused and
with the text hidden (image only). Ratios are against the first size (the default, 224). Writes
OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from multimodal_tags.data.catalog import Catalog, read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.data.images import load_image
from multimodal_tags.features import EncoderSet, encode_images

from experiments.common import MYNTRA, Log, markdown_table, myntra_catalog, run_dir
from experiments.myntra_benchmark import parse_args, plan_runs
from experiments.runs import train_all


def image_speed(cat: Catalog, size: int, precision: str, n: int = 512) -> float:
    """Photos per second from files to vectors (decode, resize, encode) at `size`, into an empty cache."""
    products = [p for p in cat.products if p.split == "test" and p.image][:n]
    encoders = EncoderSet(image_spec="effnet-lite0", image_size=size, precision=precision)
    with tempfile.TemporaryDirectory() as tmp, FeatureCache(tmp) as cache:
        encoders.image.encode([load_image(products[0].image, cat.image_root)])  # warm-up: first calls allocate
        return encode_images(products, encoders.image, cache, cat.image_root, progress=False).per_second


def _jobs(a, sizes: list[int], catalog: Path, cache: Path, log) -> list[dict]:
    args = parse_args(["--out", str(a.out), "--no-finetune", "--epochs", str(a.epochs)] + (["--quick"] if a.quick else []))
    _, [template], _ = plan_runs(args, a.out, catalog, cache, log)
    jobs = []
    for size in sizes:
        name = f"fused, frozen, {size}px"
        jobs.append({**template, "name": name, "run_dir": str(run_dir(a.out, name)),
                     "cfg": dataclasses.replace(template["cfg"], image_size=size)})
    return jobs


def _scores(result: dict) -> dict:
    test, image = result["metrics"]["test"]["decoder"], result["masked"]["image"]["test"]["decoder"]
    return {"test_acc": test["category_accuracy"], "test_tag_f1": test["tags_micro_f1"],
            "image_only_acc": image["category_accuracy"], "image_only_tag_f1": image["tags_micro_f1"],
            "train_min": result["seconds"] / 60}


def _trained_before(out: Path) -> dict[int, dict]:
    """Scores of the sizes an earlier run into `out` trained (its results.json), without their speeds."""
    if not (out / "results.json").exists():
        return {}
    sizes = json.loads((out / "results.json").read_text())["sizes"]
    return {int(size): {k: v for k, v in row.items() if not k.startswith("photos_per_s")} for size, row in sizes.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(MYNTRA))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="feature cache (default OUT/features-cache)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 160, 128, 96])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="a small subset and 2 epochs, for tests")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    with Log(a.out) as log:
        t0 = time.perf_counter()
        catalog = myntra_catalog(Path(a.data), a.out, a.quick, log)
        products = read_catalog(catalog)  # read once for every size and precision
        speed = {size: {p: image_speed(products, size, p) for p in ("fp32", "auto")} for size in a.sizes}
        log(f"photo encoding speed (photos/s): {speed}")
        scores = _trained_before(a.out)
        todo = [size for size in a.sizes if size not in scores]
        jobs = _jobs(a, todo, catalog, a.cache or a.out / "features-cache", log)
        scores |= {size: _scores(r) for size, r in zip(todo, train_all(jobs, 2, catalog, log) if jobs else [])}
        rows = {size: {**scores[size], "photos_per_s_fp32": speed[size]["fp32"], "photos_per_s_auto": speed[size]["auto"]}
                for size in a.sizes}
        results = {"sizes": rows, "baseline": a.sizes[0], "minutes": (time.perf_counter() - t0) / 60}
        (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        md = table(results)
        (a.out / "results.md").write_text(md + "\n", encoding="utf-8")
        log(md)
    return results


def table(r: dict) -> str:
    base = r["sizes"][r["baseline"]]
    rows = [{"photo px": size, "test acc": s["test_acc"], "test tag F1": s["test_tag_f1"],
             "image-only acc": s["image_only_acc"], "image-only tag F1": s["image_only_tag_f1"],
             "photos/s fp32": s["photos_per_s_fp32"], "photos/s auto": s["photos_per_s_auto"],
             "speed vs baseline (auto)": f"{s['photos_per_s_auto'] / base['photos_per_s_auto']:.2f}x"}
            for size, s in r["sizes"].items()]
    return markdown_table(rows, {"photos/s fp32": 1, "photos/s auto": 1})


if __name__ == "__main__":
    main()
