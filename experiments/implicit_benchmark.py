"""Implicit attributes: a trained model scored on test texts that no longer state the answer.

    python experiments/implicit_benchmark.py --data ../shared/datasets/fashion-myntra --model MODEL --out OUT [--cache DIR]

Myntra's names state most labels ("Nike Men Blue Polo Tshirts"), so a model can score well while
reading only words. This scores MODEL (a model folder, e.g. the benchmark's OUT/model) on the test
split five ways:

- `full`: the texts as they are;
- `masked_colour`: every colour name of the data set removed from title and description;
- `masked_category`: every word of every category name, singular and plural, removed;
- `masked_all`: both, plus gender words and the words of the product's own tag values;
- `photo_only`: the model with its text hidden (and `photo_only_model`: a dedicated image-only model,
  with `--image-model DIR`).

The masking rule (multimodal_tags/data/masking.py): a word list is every word of every name
(lower-cased, in its singular and plural forms: +s, +es, less a final s / es; function words such as
"and" and "of" left out); every whole-word occurrence of a listed word is removed, case-insensitive,
and the white space left behind collapsed. Colour names are the values of the `colour:` tags of the
whole catalog; category names are all of its categories; gender words are `GENDER_WORDS`.

Tags are the model's own output rows (the decoder's tags where it has one, with the keys it must
answer filled, as `mmtags tag` writes them). OUT/results.json has one entry per variant with
`category_acc`, `micro_f1`, `macro_f1`, `colour_f1`, `colour_given_share` (the share of products given
any colour tag) and `f1_by_key`, and `without_filling`: the same with the required keys left unanswered
where the model's tags say nothing of them (the lever measured alone); OUT/<variant>_predictions.jsonl
holds the rows.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.data.masking import (GENDER_WORDS, category_words, colour_words,
                                          mask_products)
from multimodal_tags.features import RunConfig
from multimodal_tags.features.encoders import EncoderSet
from multimodal_tags.features.source import FeatureSource
from multimodal_tags.inference.predict import predict_source
from multimodal_tags.inference.rows import prediction_rows, resolve_tag_source, score_rows
from multimodal_tags.models.tagger import Tagger

from experiments.common import MYNTRA, markdown_table, myntra_catalog, run_facts

VARIANTS = ("full", "masked_colour", "masked_category", "masked_all", "photo_only")
DOC_KEYS = ("colour", "gender", "usage", "pattern", "sleeve length")


def masked_variants(products: list, everything: list) -> dict[str, list]:
    """The test products as they are and under each mask (word lists from `everything`, the catalog)."""
    colours = colour_words(p.tags for p in everything)
    categories = category_words(p.category for p in everything)
    return {"full": products, "masked_colour": mask_products(products, colours),
            "masked_category": mask_products(products, categories),
            "masked_all": mask_products(products, colours | categories | GENDER_WORDS, own_tags=True),
            "photo_only": products}


def summary(products: list, rows: list[dict]) -> dict:
    """The benchmark's numbers for one variant's output rows."""
    m = score_rows(products, rows)
    by_key = m["f1_by_key"]
    given = sum(any(t.startswith("colour:") for t in r["tags"]) for r in rows)
    return {"products": len(rows), "category_acc": m["category_accuracy"], "micro_f1": m["tags_micro_f1"],
            "macro_f1": m["tags_macro_f1"], "colour_f1": by_key.get("colour", 0.0),
            "colour_given_share": given / max(len(rows), 1),
            "micro_precision": m["tags_micro_precision"], "micro_recall": m["tags_micro_recall"],
            "f1_by_key": by_key}


def unfilled(rows: list[dict]) -> list[dict]:
    """The rows without their "filled" tags: what the model says with no key forced to an answer."""
    return [{**r, "tags": [t for t in r["tags"] if r["tag_sources"].get(t) != "filled"]} for r in rows]


def score_variant(model: Tagger, encoders: EncoderSet, products: list, image_root: Path, cache_dir: Path,
                  hide_text: bool, log) -> tuple[dict, list[dict]]:
    """Encode (what the cache lacks), predict and score one variant's products."""
    with FeatureCache(cache_dir) as cache:
        source = FeatureSource.encode(products, encoders, cache, image_root, model.cfg, log=log)
    if hide_text:
        source = source.hide("image")
    rows = prediction_rows(products, predict_source(model, source),
                           resolve_tag_source("auto", model.decoder is not None))
    return {**summary(products, rows), "without_filling": summary(products, unfilled(rows))}, rows


def load_model(model_dir: str, settings: RunConfig, without_photo_head: bool) -> tuple[Tagger, EncoderSet]:
    """A model folder and its encoders (built on first use), its photo head cut off for the ablation."""
    model = Tagger.load(model_dir)
    if without_photo_head and model.photo_head is not None:
        with torch.no_grad():
            model.photo_head.tag_weight.zero_()
            model.photo_head.category_weight.zero_()
    return model, settings.encoders_for(model.cfg)


def _table_row(name: str, r: dict) -> dict:
    return {"test texts": name, **{k: r[k] for k in ("category_acc", "micro_f1", "macro_f1", "colour_f1",
                                                   "colour_given_share")},
            **{f"F1 {k}": r["f1_by_key"].get(k, 0.0) for k in DOC_KEYS}}


def implicit_table(results: dict) -> str:
    """The markdown table of a results.json: each variant, then without filling (docs/implicit.md)."""
    variants = [n for n in results if isinstance(results[n], dict) and "f1_by_key" in results[n]]
    rows = [row for n in variants for row in (_table_row(n, results[n]),
                                              _table_row(f"{n}, no filling", results[n]["without_filling"]))]
    return markdown_table(rows, {"colour_given_share": 3})


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(MYNTRA))
    ap.add_argument("--model", required=True, help="a model folder (the benchmark's OUT/model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", help="feature cache (default OUT/features-cache)")
    ap.add_argument("--catalog", help="an imported catalog (default: import --data into OUT)")
    ap.add_argument("--image-model", help="a dedicated image-only model folder, scored as photo_only_model")
    ap.add_argument("--split", default="test")
    ap.add_argument("--without-photo-head", action="store_true",
                    help="an ablation at inference: the photo head's logits no longer reach the decoder and the "
                         "category (its learned weights set to 0)")
    ap.add_argument("--quick", action="store_true", help="the benchmark's small subset (tests)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = RunConfig(progress=False)
    catalog = read_catalog(a.catalog or myntra_catalog(Path(a.data), out, a.quick))
    cache_dir = Path(a.cache or out / "features-cache")
    test = [p for p in catalog.products if p.split == a.split]
    jobs = [(v, a.model, v == "photo_only", products)
            for v, products in masked_variants(test, catalog.products).items()]
    if a.image_model:
        jobs.append(("photo_only_model", a.image_model, True, test))
    results, loaded, t0 = {}, {}, time.perf_counter()
    for name, model_dir, hide_text, products in jobs:
        if model_dir not in loaded:  # each model and its encoders loaded once, for all its variants
            loaded[model_dir] = load_model(model_dir, settings, a.without_photo_head)
        model, encoders = loaded[model_dir]
        results[name], rows = score_variant(model, encoders, products, catalog.image_root, cache_dir, hide_text,
                                            settings.log)
        with open(out / f"{name}_predictions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[name].items()
                                      if isinstance(v, float)), flush=True)
    results["model"], results["minutes"] = str(a.model), (time.perf_counter() - t0) / 60
    results["run"] = run_facts(settings.precision)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(implicit_table(results))
    return results


if __name__ == "__main__":
    main()
