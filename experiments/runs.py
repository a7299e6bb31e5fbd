"""Training the benchmark's runs: each run is a job (a dict) trained by `train_tagger`, several at once in
worker processes that share the cores; shared work (tuned encoders, features, word-score SVMs) is done
first, with every core."""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.features import RunConfig, encode_catalog
from multimodal_tags.inference import score_split
from multimodal_tags.models.tagger import Tagger
from multimodal_tags.train.fit_word_scores import fit_or_load_word_scores
from multimodal_tags.train.job import copies_maker, split_datasets, split_indices, train_tagger, tuned_config

from experiments.common import Log


def masked_metrics(run_dir: Path, catalog: Path, cache: Path) -> dict[str, dict]:
    """Metrics of a trained fused model shown one modality only (the other hidden at inference), for
    "text" and "image"."""
    model = Tagger.load(run_dir / "model")
    cat = read_catalog(catalog)
    source = encode_catalog(cat, model.cfg, cache, RunConfig(log=lambda s: None))
    idx = split_indices(cat)
    out = {}
    for only in ("text", "image"):
        shown = source.hide(only)
        out[only] = {split: score_split(model, shown.subset(idx[split]), f"{run_dir.name}/{only}-only")[0]
                     for split in ("val", "test")}
    return out


def run_job(job: dict) -> dict:
    """Train (and, for a fused model, evaluate with a modality hidden) one benchmark run; runs in a worker
    process when runs go in parallel, each on its share of the cores."""
    import torch

    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    with Log(Path(job["out"]), f"[{job['name']}] ") as log:
        t0 = time.perf_counter()
        result = train_tagger(job["catalog"], run_dir, job["cfg"], job["tcfg"],
                              RunConfig(cache_dir=job["cache"], log=log), modalities=job["modalities"],
                              finetune=job["finetune"], finetune_image=job["finetune_image"])
        seconds = time.perf_counter() - t0
        masked, stages = None, dict(result.get("stages") or {})
        if job["hide_modalities"]:
            t1 = time.perf_counter()
            masked = masked_metrics(run_dir, Path(job["catalog"]), Path(job["cache"]))
            stages["evaluation with a modality hidden"] = round(time.perf_counter() - t1, 1)
            log(f"evaluated with one modality hidden in {time.perf_counter() - t1:.0f}s")
    return {"metrics": result["metrics"], "seconds": seconds, "masked": masked, "stages": stages}


def prefill(catalog: Path, jobs: list[dict], log) -> None:
    """With every core, before the runs split them: tune each run's encoders, encode the catalog and its
    masked copies with them, and fit the word-score SVMs the runs share (the runs then find all of it
    done; the SVMs read only words, so every run finds the same ones)."""
    products, settings = read_catalog(catalog), RunConfig(log=log)
    for job in jobs:
        tcfg, cache = job["tcfg"], Path(job["cache"])
        cfg = tuned_config(products, job["cfg"], Path(job["run_dir"]), tcfg.max_train_products, log,
                           job["finetune"], job["finetune_image"])
        source = encode_catalog(products, cfg, cache, settings)
        data = split_datasets(products, source, cfg, tcfg.max_train_products,
                              copies_for=copies_maker(products, cfg, tcfg, cache, settings))
        if cfg.word_scores.enabled:
            fit_or_load_word_scores(data.train, cfg.lexical_buckets, tcfg, cache, log,
                                    len(data.labels.categories) if cfg.word_scores.categories else 0)


def train_all(jobs: list[dict], n_jobs: int, catalog: Path, log) -> list[dict]:
    """The results of `run_job` for every job, `n_jobs` at a time."""
    parallel = min(n_jobs, len(jobs))
    for job in jobs:  # split the cores between the runs that go at once
        job["threads"] = max(1, (os.cpu_count() or 1) // max(parallel, 1))
    if parallel <= 1:
        return [run_job(job) for job in jobs]
    prefill(catalog, jobs, log)
    # Two single-threaded trainings on 2 cores finish sooner than one after the other with two threads
    # each (the small matrices of the heads and GPT-2 scale poorly).
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_job, jobs))
