"""The main job on the built-in synthetic shop: import -> features -> kNN baseline -> trained tagger
-> tag store -> report and gallery.

`mmtags demo` (and `make demo`) runs this with the offline default encoders; tests run it with
tiny random ones. Everything lands in one run folder.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from .data.catalog import read_catalog
from .data.feature_cache import FeatureCache
from .data.importers import generic, run_import
from .data.synthetic import SYNTHETIC_MAPPING, SYNTHETIC_TAG_COLUMNS, make_synthetic_export
from .eval.metrics import tagging_report
from .features import encode_images, encode_texts, load_features
from .models.factory import (DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, create_image_encoder,
                             create_text_encoder, require_pretrained)
from .models.knn import KNNTagger, fuse
from .config import TrainConfig
from .eval.gallery import write_gallery
from .models.presets import get_preset
from .online.tag_job import tag_catalog
from .run_info import write_run_info
from .train.job import train_tagger


def _add_broken_rows(export: Path) -> None:
    """Two rows a real export would have: a photo that is not there, and a row with no id."""
    with open(export, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "syn-broken-photo", "title": "Red Solid Cotton T-Shirt", "description":
                            "A solid t-shirt made of cotton.", "image": "images/not-there.jpg", "category": "T-Shirt",
                            "colour": "red", "material": "cotton", "pattern": "solid"}) + "\n")
        f.write(json.dumps({"title": "Blue Mug without an id", "category": "Mug"}) + "\n")


def run_demo(out: str | Path, n_products: int = 600, text_encoder: str = DEFAULT_TEXT_ENCODER,
             image_encoder: str = DEFAULT_IMAGE_ENCODER, allow_random_weights: bool = False, k: int = 10,
             precision: str = "auto", progress: bool = True, log: Callable[[str], None] = print,
             epochs: int = 25) -> dict:
    """Run the demo end to end into `out`; return the metrics of each model."""
    out = Path(out)
    t0 = time.perf_counter()
    log(f"[1/7] synthetic shop: {n_products} products (English and Chinese) -> {out / 'export'}")
    export = make_synthetic_export(out / "export", n=n_products)
    _add_broken_rows(export)

    log("[2/7] import (generic importer, tag columns colour/material/pattern)")
    catalog_path = out / "catalog.jsonl"
    result_import = run_import(generic.read(export, mapping=SYNTHETIC_MAPPING, tag_columns=SYNTHETIC_TAG_COLUMNS),
                               catalog_path)
    log("      " + result_import.report.summary())
    for issue in result_import.report.issues:
        log(f"      {issue}")
    catalog = read_catalog(catalog_path)

    log(f"[3/7] features: text {text_encoder}, image {image_encoder}")
    te = create_text_encoder(text_encoder).set_precision(precision)
    ie = create_image_encoder(image_encoder).set_precision(precision)
    for enc in (te, ie):
        require_pretrained(enc, allow_random_weights)
    with FeatureCache(out / "cache") as cache:
        for stats in (encode_texts(catalog.products, te, cache, progress=progress),
                      encode_images(catalog.products, ie, cache, catalog.image_root, num_workers=0,
                                    progress=progress)):
            log("      " + stats.summary())
        feats = load_features(catalog.products, cache, te.cache_key(), ie.cache_key())

    log(f"[4/7] k-nearest-neighbour tagger (k={k}) on text, image and both")
    split = [p.split for p in catalog.products]
    train = [i for i, s in enumerate(split) if s == "train"]
    test = [i for i, s in enumerate(split) if s in ("val", "test")]  # the demo is small: score val+test
    views = {
        "text": fuse([feats["text"]], [feats["has_text"]]),
        "image": fuse([feats["image"]], [feats["has_image"]]),
        "text+image": fuse([feats["text"], feats["image"]], [feats["has_text"], feats["has_image"]]),
    }
    metrics, predictions = {}, {}
    for name, x in views.items():
        knn = KNNTagger(k=k).fit(x[train], [catalog.products[i].category for i in train],
                                 [catalog.products[i].tags for i in train])
        preds = knn.predict(x[test])
        gold = [catalog.products[i] for i in test]
        metrics[name] = tagging_report([p.category for p in gold], [q["category"] for q in preds],
                                       [set(p.tags) for p in gold], [set(knn.tags_of(q)) for q in preds])
        predictions[name] = [{"id": p.id, "category": q["category"], "category_score": round(q["category_score"], 4),
                              "tags": knn.tags_of(q), "tag_scores": {t: round(s, 4) for t, s in q["tag_scores"].items()},
                              "source": f"knn:{name}", "content_hash": p.content_hash}
                             for p, q in zip(gold, preds)]

    log("[5/7] train the tagger (gated fusion, heads, GPT-2 decoder) on the train split")
    cfg = dataclasses.replace(get_preset("offline" if not te.random_weights else "tiny"), text_encoder=text_encoder,
                              image_encoder=image_encoder, text_dim=te.dim, image_dim=ie.dim,
                              lexical_buckets=1 << 14)  # a small shop needs a small word table
    result = train_tagger(catalog_path, out / "tagger", cfg, TrainConfig(epochs=epochs, batch_size=32, lr=2e-3,
                                                                        patience=6),
                          cache_dir=out / "cache", allow_random_weights=allow_random_weights, precision=precision,
                          log=lambda s: log("      " + s) if s.startswith("epoch") else None)
    for source in ("head", "decoder"):
        m = result["metrics"]["test"][source]
        metrics[f"tagger, tags from {source}"] = m

    log("[6/7] tag the whole catalog into a SQLite tag store (a rerun continues; `mmtags refresh` keeps it fresh)")
    (out / "tagged.jsonl").unlink(missing_ok=True)  # a new demo run has a new model: tag afresh
    stats = tag_catalog(out / "tagger" / "model", catalog_path, out / "tagged.jsonl", store_path=out / "tags.db",
                        cache_dir=out / "cache", allow_random_weights=allow_random_weights, precision=precision,
                        progress=False, log=log)
    log("      " + stats.summary())

    log(f"[7/7] report, predictions and gallery -> {out}")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for row in predictions["text+image"]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_gallery(out / "tagger" / "test_predictions.jsonl", catalog_path, out / "gallery.html")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    table = ["| model | category acc | tag micro-P | tag micro-R | tag micro-F1 | tag macro-F1 |",
             "|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        label = name if name.startswith("tagger") else f"kNN on {name}"
        table.append(f"| {label} | {m['category_accuracy']:.3f} | {m['tags_micro_precision']:.3f} | "
                     f"{m['tags_micro_recall']:.3f} | {m['tags_micro_f1']:.3f} | {m['tags_macro_f1']:.3f} |")
    report = ["# Demo run: synthetic shop", "",
              f"Encoders: text `{text_encoder}`, image `{image_encoder}`. kNN (k={k}) scored on val+test; the "
              f"tagger on test (its own report: tagger/report.md).", "", *table, "",
              f"Import: {result_import.report.summary()}", "", "Gallery: gallery.html; tag store: tags.db."]
    (out / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    write_run_info(out, {"job": "demo", "n_products": n_products, "text_encoder": te.describe(),
                         "image_encoder": ie.describe(), "k": k, "seed": 7, "epochs": epochs})
    for line in table:
        log("      " + line)
    log(f"done in {time.perf_counter() - t0:.0f}s: report.md, gallery.html, tags.db, tagger/model in {out}")
    return metrics
