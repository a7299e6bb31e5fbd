"""Run a trained Tagger over a dataset, and turn its outputs into prediction rows and metrics."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.schema import Product
from ..models.heads import tune_thresholds
from ..models.tagger import Tagger
from ..train.data import FeatureDataset, collate, to_batch
from .metrics import tagging_report, top_k_accuracy

TAG_SOURCES = ("decoder", "head", "both")


@torch.no_grad()
def predict_dataset(model: Tagger, data: FeatureDataset, batch_size: int = 512, generate: bool = True,
                    accelerator=None) -> list[dict]:
    """One prediction dict per product of `data`, in order. With an accelerator, each process predicts
    its shard and the results are gathered (duplicates from uneven shards dropped)."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    core = accelerator.unwrap_model(model) if accelerator is not None else model
    if accelerator is not None:
        loader = accelerator.prepare(loader)  # each process gets its shard of the batches
    core.eval()
    preds: list[tuple[int, dict]] = []
    for raw in loader:
        rows = core.predict(to_batch(raw), generate=generate)
        idx = raw["index"].tolist()
        if accelerator is not None:
            gathered = accelerator.gather_for_metrics(list(zip(idx, rows)), use_gather_object=True)
            preds.extend(gathered)
        else:
            preds.extend(zip(idx, rows))
    by_index = dict(preds)
    return [by_index[i] for i in range(len(data))]


def tune_model_thresholds(model: Tagger, val: FeatureDataset, batch_size: int = 1024) -> np.ndarray:
    """Set per-tag thresholds of the tag head from validation data; returns them."""
    loader = DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=collate)
    probs = torch.cat([model.tag_probabilities(to_batch(raw)) for raw in loader]).numpy()
    th = tune_thresholds(probs, val.tags.numpy())
    model.thresholds.copy_(torch.from_numpy(th))
    return th


def tune_decoder_threshold(model: Tagger, val_preds: list[dict], products: Sequence[Product],
                           grid: Sequence[float] = tuple(round(0.05 * i, 2) for i in range(19))) -> float:
    """Set the probability below which generated tags are dropped, to maximise micro-F1 on validation
    predictions made with threshold 0, and drop them from `val_preds` too; returns the threshold.

    Micro-F1 counts a wrong value as two errors (a false positive and a missed tag) and no value as
    one: when the decoder is unsure of a colour, leaving it out scores better than a guess."""
    gold = [set(p.tags) for p in products]
    gen = [q.get("generated_tags", {}) for q in val_preds]
    n_gold = sum(map(len, gold))

    def f1(th: float) -> float:
        tp = npred = 0
        for g, tags in zip(gold, gen):
            kept = {t for t, s in tags.items() if s >= th}
            tp, npred = tp + len(kept & g), npred + len(kept)
        return 2 * tp / max(npred + n_gold, 1)

    best = max(grid, key=lambda th: (f1(th), -th))
    model.decoder_threshold.fill_(float(best))
    for q in val_preds:
        if "generated_tags" in q:
            q["generated_tags"] = {t: s for t, s in q["generated_tags"].items() if s >= best}
    return float(best)


def chosen_tags(pred: dict, source: str) -> dict[str, float]:
    """Tags of one prediction from the tag head, the decoder, or both (union, max score)."""
    if source not in TAG_SOURCES:
        raise ValueError(f"tag source {source!r} is not one of {', '.join(TAG_SOURCES)}")
    head, gen = pred.get("head_tags", {}), pred.get("generated_tags", {})
    if source == "head":
        return dict(head)
    if source == "decoder":
        return dict(gen)
    return {t: max(head.get(t, 0.0), gen.get(t, 0.0)) for t in {**head, **gen}}


def prediction_rows(products: Sequence[Product], preds: Sequence[dict], source: str, model_id: str = "") -> list[dict]:
    """Rows for predictions JSONL: what `../shared/bench/myntra_eval.py` reads (id, category, tags) plus
    scores, where each tag came from, the modality weights and the content hash."""
    rows = []
    for p, q in zip(products, preds):
        tags = chosen_tags(q, source)
        head, gen = q.get("head_tags", {}), q.get("generated_tags", {})
        rows.append({"id": p.id, "category": q["category"], "category_score": round(q["category_score"], 5),
                     "tags": sorted(tags, key=lambda t: -tags[t]),
                     "tag_scores": {t: round(s, 5) for t, s in sorted(tags.items(), key=lambda kv: -kv[1])},
                     "tag_sources": {t: "both" if (t in head and t in gen) else "head" if t in head else "decoder"
                                     for t in tags},
                     "category_top": q.get("category_top"), "modality_weights": q.get("modality_weights"),
                     "model_id": model_id, "content_hash": p.content_hash})
    return rows


def score_rows(products: Sequence[Product], rows: Sequence[dict]) -> dict:
    """Metrics of prediction rows against the products' labels (products without a category are
    left out of accuracy by counting as wrong only when they have one)."""
    report = tagging_report([p.category for p in products], [r["category"] for r in rows],
                            [set(p.tags) for p in products], [set(r["tags"]) for r in rows])
    if rows and rows[0].get("category_top"):
        ranked = [[c for c, _ in r["category_top"]] for r in rows]
        report["category_top5_accuracy"] = top_k_accuracy([p.category for p in products], ranked, 5)
    return report
