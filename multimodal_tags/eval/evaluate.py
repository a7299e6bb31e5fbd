"""The evaluation job: a saved model + a catalog split -> predictions JSONL, metrics JSON, run.json.

Runs under `accelerate launch` as well: each process predicts a shard, results are gathered, and the
main process writes the files, so N processes give exactly the metrics of one.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from accelerate import Accelerator

from ..data.catalog import read_catalog
from ..features.catalog_features import encode_catalog
from ..features.settings import RunConfig
from ..inference.predict import predict_source
from ..inference.rows import DEFAULT_TAG_SOURCE, prediction_rows, resolve_tag_source, score_rows
from ..models.encoder_base import default_device
from ..models.tagger import Tagger
from ..run_info import write_run_info


def _quiet(line: str) -> None:
    """The log of the processes other than the main one."""


def evaluate_model(model_dir: str | Path, catalog_path: str | Path, out_dir: str | Path, split: str = "test",
                   tag_source: str = DEFAULT_TAG_SOURCE, settings: RunConfig | None = None) -> dict | None:
    """Evaluate; returns the metrics on the main process (None on the others)."""
    settings = settings or RunConfig()
    accelerator = Accelerator(cpu=default_device() == "cpu")
    log = settings.log if accelerator.is_main_process else _quiet
    model = Tagger.load(model_dir)
    tag_source = resolve_tag_source(tag_source, model.decoder is not None, str(model_dir))
    catalog = read_catalog(catalog_path)
    log(catalog.report.summary())
    keep = [i for i, p in enumerate(catalog.products) if split == "all" or p.split == split]
    if not keep:
        raise ValueError(f"{catalog_path} has no products in split {split!r}")
    with accelerator.main_process_first():  # one process encodes what is missing, the others then read
        source = encode_catalog(catalog, model.cfg, settings.cache_for(catalog_path),
                                dataclasses.replace(settings, log=log)).subset(keep)
    model = model.to(accelerator.device)  # inference only: no DDP wrapper needed
    preds = predict_source(model, source, generate=tag_source != "head", accelerator=accelerator)
    if not accelerator.is_main_process:
        return None
    rows = prediction_rows(source.products, preds, tag_source, model_id=Path(model_dir).name)
    metrics = score_rows(source.products, rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    write_run_info(out, {"job": "evaluate", "model": str(model_dir), "catalog": str(catalog_path), "split": split,
                         "tag_source": tag_source, "processes": accelerator.num_processes})
    return metrics
