"""How the photo head should be trained: its losses and step size, on a trained model's photo vectors.

    python experiments/photo_head_probe.py --model RUN/model --catalog RUN/catalog.jsonl \
        --cache RUN/features-cache --out OUT

The photo head (models/heads.PhotoHead) is a linear read of the photo vector. This fits it alone, as
`fit` trains it inside the tagger (the project's `photo_loss`, AdamW, warm-up then cosine decay, the
recipe's epochs and batch size) on every train photo of the catalog, under several settings, and
scores each on the val photos: colour accuracy (the most probable colour, as a row's colour is filled,
over the products with one colour), category accuracy, and the same on 5,000 train photos, whose gap
to val says how much surer the head is of the photos it was fitted on (what the decoder learns to
trust). Writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features import RunConfig
from multimodal_tags.features.encode import load_features
from multimodal_tags.inference.thresholds import tag_matrix
from multimodal_tags.models.heads import PhotoHead, photo_loss
from multimodal_tags.models.tag_tokenizer import columns_by_key, single_value_columns
from multimodal_tags.models.tagger import Tagger

from experiments.common import run_facts

#: (name, learning rate, weight of the single-valued keys' softmax loss)
SETTINGS = [("BCE, lr 1e-3 (the tagger's)", 1e-3, 0.0), ("BCE + values, lr 1e-3", 1e-3, 1.0),
            ("BCE, lr 1e-2", 1e-2, 0.0), ("BCE + values, lr 1e-2", 1e-2, 1.0), ("BCE + values, lr 3e-2", 3e-2, 1.0)]


def split_arrays(model: Tagger, products: list, cache: FeatureCache, key: str) -> dict[str, torch.Tensor]:
    """Photo vectors, multi-hot tags and category indices of the products that show a photo."""
    f = load_features(products, cache, None, key)
    keep = torch.from_numpy(f["has_image"]).bool()
    cat_index = {c: i for i, c in enumerate(model.categories)}
    shown = [p for p, k in zip(products, keep.tolist()) if k]
    return {"image": torch.from_numpy(f["image"])[keep].float(),
            "tags": torch.from_numpy(tag_matrix(shown, model.tags)),
            "category": torch.tensor([cat_index.get(p.category, -1) for p in shown])}


def fit(head: PhotoHead, data: dict, lr: float, value_weight: float, epochs: int, batch: int, seed: int) -> PhotoHead:
    """The tagger's schedule for the head alone: AdamW (decay 0.01), 5% warm-up, cosine decay."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(data["image"]) / batch)
    warmup = max(1, int(0.05 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, steps - warmup))))))
    g, groups = torch.Generator().manual_seed(seed), (head.group_index, head.group_mask)
    head.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(data["image"]), generator=g).split(batch):
            tag_logits, category_logits = head(data["image"][rows])
            loss = photo_loss(tag_logits, category_logits, data["tags"][rows], data["category"][rows],
                              torch.ones(len(rows), dtype=torch.bool), groups, value_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def scores(head: PhotoHead, data: dict, colour_columns: list[int]) -> dict[str, float]:
    tag_logits, category_logits = head(data["image"])
    colours = data["tags"][:, colour_columns]
    one = colours.sum(1) == 1
    right = tag_logits[:, colour_columns].argmax(1) == colours.argmax(1)
    return {"colour_acc": round(right[one].float().mean().item(), 4),
            "category_acc": round((category_logits.argmax(1) == data["category"]).float().mean().item(), 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained model folder with a photo head")
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--cache", required=True, help="the feature cache holding its photo vectors")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--allow-random-weights", action="store_true", help="for tests: the model's encoders are random")
    a = ap.parse_args(argv)
    model = Tagger.load(a.model)
    settings = RunConfig(progress=False, allow_random_weights=a.allow_random_weights)
    key = settings.encoders_for(model.cfg).image.cache_key()  # where its photo vectors are cached
    catalog = read_catalog(a.catalog)
    with FeatureCache(a.cache) as cache:
        data = {split: split_arrays(model, [p for p in catalog.products if p.split == split and p.image], cache, key)
                for split in ("train", "val")}
    sample = {k: v[:5000] for k, v in data["train"].items()}
    colour_columns = columns_by_key(model.tags).get("colour", [])
    groups = single_value_columns(model.tags, model.tokenizer.single_valued)
    rows = []
    for name, lr, value_weight in SETTINGS:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        head = PhotoHead(data["train"]["image"].shape[1], len(model.tags), len(model.categories),
                         model.cfg.dropout, value_groups=groups)
        fit(head, data["train"], lr, value_weight, a.epochs, a.batch_size, seed=0)
        row = {"setting": name, **{f"val_{k}": v for k, v in scores(head, data["val"], colour_columns).items()},
               **{f"train_{k}": v for k, v in scores(head, sample, colour_columns).items()},
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"rows": rows, "model": a.model, "train_photos": len(data["train"]["image"]),
              "val_photos": len(data["val"]["image"]), "run": run_facts()}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
