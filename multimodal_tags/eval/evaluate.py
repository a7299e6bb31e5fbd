"""The evaluation job: a saved model + a catalog split -> predictions JSONL, metrics JSON, run.json.

Runs under `accelerate launch` as well: each process predicts a shard, results are gathered, and the
main process writes the files, so N processes give exactly the metrics of one.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..data.catalog import read_catalog
from ..models.tagger import Tagger
from ..run_info import write_run_info
from ..train.data import FeatureDataset, LabelSpace
from .predict import predict_dataset, prediction_rows, score_rows


def evaluate_model(model_dir: str | Path, catalog_path: str | Path, out_dir: str | Path, split: str = "test",
                   tag_source: str = "decoder", cache_dir: str | Path | None = None, precision: str = "auto",
                   allow_random_weights: bool = False, log: Callable[[str], None] = print) -> dict | None:
    """Evaluate; returns the metrics on the main process (None on the others)."""
    from accelerate import Accelerator

    from ..train.job import prepare_features

    accelerator = Accelerator(cpu=True) if not _cuda() else Accelerator()
    model = Tagger.load(model_dir)
    if tag_source != "head" and model.decoder is None:
        raise ValueError(f"{model_dir} has no tag decoder: use --tag-source head")
    catalog = read_catalog(catalog_path)
    if accelerator.is_main_process:
        log(catalog.report.summary())
    keep = [i for i, p in enumerate(catalog.products) if split == "all" or p.split == split]
    if not keep:
        raise ValueError(f"{catalog_path} has no products in split {split!r}")
    cache_dir = Path(cache_dir or Path(catalog_path).resolve().parent / "features-cache")
    with accelerator.main_process_first():  # one process encodes what is missing, the others then read
        feats = prepare_features(catalog, model.cfg, cache_dir, precision, allow_random_weights,
                                 log if accelerator.is_main_process else (lambda s: None))
    products = [catalog.products[i] for i in keep]
    labels = LabelSpace(model.categories, model.tags, model.tokenizer, model.adversary_classes)
    data = FeatureDataset(products, {k: v[keep] for k, v in feats.items()}, labels, model.cfg)
    model = model.to(accelerator.device)  # inference only: no DDP wrapper needed
    preds = predict_dataset(model, data, generate=tag_source != "head", accelerator=accelerator)
    if not accelerator.is_main_process:
        return None
    rows = prediction_rows(products, preds, tag_source, model_id=Path(model_dir).name)
    metrics = score_rows(products, rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    write_run_info(out, {"job": "evaluate", "model": str(model_dir), "catalog": str(catalog_path), "split": split,
                         "tag_source": tag_source, "processes": accelerator.num_processes})
    return metrics


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
