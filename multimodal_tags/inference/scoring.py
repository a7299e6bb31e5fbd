"""Predict a labelled split and score it, for every tag source the model has."""
from __future__ import annotations

from ..features.source import FeatureSource
from ..models.tagger import Tagger
from .predict import predict_source
from .rows import TAG_SOURCES, prediction_rows, score_rows


def score_split(model: Tagger, source: FeatureSource, model_id: str,
                preds: list[dict] | None = None) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """({tag source: metrics}, {tag source: output rows}) for the products of `source`; `preds`: the
    predictions when they are already made."""
    preds = preds if preds is not None else predict_source(model, source)
    sources = TAG_SOURCES if model.decoder is not None else ("head",)
    rows = {s: prediction_rows(source.products, preds, s, model_id) for s in sources}
    return {s: score_rows(source.products, r) for s, r in rows.items()}, rows
