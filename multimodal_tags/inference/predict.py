"""Run a Tagger over a FeatureSource: one prediction dict per product, in order."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..features.source import FeatureSource, collate, to_batch
from ..models.tagger import Tagger

PREDICT_BATCH = 512  # products per forward pass when predicting a whole split


@torch.no_grad()
def predict_source(model: Tagger, source: FeatureSource, batch_size: int = PREDICT_BATCH, generate: bool = True,
                   accelerator=None) -> list[dict]:
    """One prediction dict per product of `source` (see Tagger.predict). With an accelerator, each
    process predicts its shard and the results are gathered (duplicates from uneven shards dropped)."""
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=collate)
    core = accelerator.unwrap_model(model) if accelerator is not None else model
    if accelerator is not None:
        loader = accelerator.prepare(loader)  # each process gets its shard of the batches
    core.eval()
    preds: list[tuple[int, dict]] = []
    for raw in loader:
        rows = list(zip(raw["index"].tolist(), core.predict(to_batch(raw), generate=generate)))
        if accelerator is not None:
            rows = accelerator.gather_for_metrics(rows, use_gather_object=True)
        preds.extend(rows)
    by_index = dict(preds)
    return [by_index[i] for i in range(len(source))]


def source_batches(source: FeatureSource, batch_size: int = PREDICT_BATCH):
    """The products of `source` in order, as model input batches of `batch_size`."""
    for raw in DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=collate):
        yield to_batch(raw)


@torch.no_grad()
def tag_probabilities(model: Tagger, source: FeatureSource, batch_size: int = 2 * PREDICT_BATCH) -> torch.Tensor:
    """[n, n_tags] tag-head probabilities of every product of `source`."""
    return torch.cat([model.tag_probabilities(batch) for batch in source_batches(source, batch_size)])
