"""What the experiments share: data paths, catalog import and lookup, run folders, a log, one markdown
table writer, the benchmark's training settings, and the run facts every results file records."""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
from pathlib import Path

from multimodal_tags.config import TrainConfig
from multimodal_tags.data.catalog import read_catalog, read_meta, write_catalog
from multimodal_tags.data.importers import myntra, run_import
from multimodal_tags.models.encoder_base import resolve_precision
from multimodal_tags.train.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MYNTRA = SHARED / "datasets" / "fashion-myntra"
EVALUATOR = SHARED / "bench" / "myntra_eval.py"
RECIPES = REPO / "configs"  # the committed recipes (multimodal_tags/train/recipe.py)
QUICK_LIMITS = {"train": 600, "val": 150, "test": 150}


def bench_recipe() -> Recipe:
    """The Myntra benchmark's recipe, configs/myntra-bench.yaml."""
    return load_recipe(RECIPES / "myntra-bench.yaml")


def bench_train_config(quick: bool = False, epochs: int | None = None, **overrides) -> TrainConfig:
    """The Myntra benchmark's training settings (every experiment that trains "the benchmark's model"
    uses these; `overrides` replace fields); `quick` is the tests' small version (2 epochs, batches of 64)."""
    tcfg = dataclasses.replace(bench_recipe().train, **{k: v for k, v in overrides.items() if v is not None})
    if quick:
        return dataclasses.replace(tcfg, epochs=2, batch_size=64)
    return dataclasses.replace(tcfg, epochs=epochs or tcfg.epochs)


def _stale(catalog: Path) -> bool:
    """Missing, or imported before the importer's current product text."""
    return not catalog.exists() or read_meta(catalog).get("text_version") != myntra.TEXT_VERSION


def quick_subset(full: Path, small: Path, limits: dict[str, int] = QUICK_LIMITS) -> Path:
    """The first `limits[split]` products of each split of `full`, written to `small`."""
    catalog, seen, keep = read_catalog(full), {s: 0 for s in limits}, []
    for p in catalog.products:
        if p.split in limits and seen[p.split] < limits[p.split]:
            keep.append(p)
            seen[p.split] += 1
    write_catalog(keep, small, meta=catalog.meta)
    return small


def myntra_catalog(data: Path, out: Path, quick: bool = False, log=print) -> Path:
    """The Myntra catalog imported into OUT once (reimported when the importer's text changed);
    `quick`: a small, fixed subset of every split."""
    full = out / "catalog.jsonl"
    if _stale(full):
        log(run_import(myntra.read(data), full).report.summary())
    if not quick:
        return full
    small = out / "catalog-quick.jsonl"
    return quick_subset(full, small) if _stale(small) else small


def benchmark_catalog(model_dir: Path, data: Path | None, out: Path, log=print) -> Path:
    """The catalog a benchmark model was trained on: the benchmark's, beside its model folder; else
    imported from `data` into OUT."""
    beside = model_dir.resolve().parent / "catalog.jsonl"
    if beside.exists():
        return beside
    if data is None:
        raise SystemExit(f"no catalog beside {model_dir}: pass --data ../shared/datasets/fashion-myntra")
    return myntra_catalog(data, out, log=log)


def default_cache(model_dir: Path, catalog: Path) -> Path:
    """The feature cache the benchmark filled (features-cache beside its model), else beside the catalog."""
    beside = model_dir.resolve().parent / "features-cache"
    return beside if beside.exists() else catalog.resolve().parent / "features-cache"


def run_dir(out: Path, name: str) -> Path:
    """The folder of a named run under OUT/runs/ ("fused, frozen" -> fused_frozen)."""
    return out / "runs" / name.replace(", ", "_").replace(" ", "-")


class Log:
    """Lines to the console and to OUT/NAME (appended), each with an optional prefix."""

    def __init__(self, out: Path, prefix: str = "", name: str = "benchmark.log"):
        self.file, self.prefix = open(out / name, "a", encoding="utf-8"), prefix

    def __call__(self, s: str) -> None:
        line = self.prefix + s
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def _cell(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], digits: dict[str, int] | None = None, default_digits: int = 4) -> str:
    """A markdown table of `rows` (one dict per row, the first row's keys as columns): floats with
    `default_digits` decimals unless `digits` names the column, None as "-"."""
    cols, digits = list(rows[0]), digits or {}
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r.get(c), digits.get(c, default_digits)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_facts(precision: str = "auto") -> dict:
    """What a results file records about its run: machine, cores, precision (resolved on this machine),
    commit and date."""
    return {"machine": _cpu_name(),
            "cores": os.cpu_count(), "precision": resolve_precision(precision), "commit": _commit(),
            "date": datetime.date.today().isoformat()}
