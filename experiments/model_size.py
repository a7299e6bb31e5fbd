"""The lean model folder: size and test metrics of a model saved dense and saved packed, side by side.

    python experiments/model_size.py --model runs/myntra-bench/model --catalog runs/myntra-bench/catalog.jsonl \
        --cache runs/cache --out runs/model-size

Loads a model folder, saves it again (the current format packs the word-score table: weights at or
below `word_scores.PRUNE_BELOW` dropped, the rest as float16 in sparse rows), and evaluates both on the
catalog's test split from the same feature cache (GPT-2 tags and tag-head tags). Prints the sizes and
metrics and writes OUT/results.json; the prediction files of both are in OUT/dense and OUT/packed.
A model already packed is measured against itself re-saved with nothing pruned (--prune 0).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from multimodal_tags.eval.evaluate import evaluate_model
from multimodal_tags.features import RunSettings
from multimodal_tags.models import word_scores
from multimodal_tags.models.tagger import Tagger

KEYS = ("category_accuracy", "tags_micro_precision", "tags_micro_recall", "tags_micro_f1", "tags_macro_f1")


def folder_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1)


def resave(model: Path, out: Path, prune: float) -> Path:
    """The model folder written again by this version, pruning the word scores at `prune`."""
    Tagger.load(model).save(out, word_score_prune=prune)
    for extra in (p for p in model.iterdir() if p.name not in {"config.json", "model.safetensors"}):
        if not (out / extra.name).exists():  # bundled text encoder, tokenizer, lineage
            (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, out / extra.name)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="feature cache (default: beside the catalog)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prune", type=float, default=word_scores.PRUNE_BELOW)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    settings = RunSettings(cache_dir=a.cache, progress=False, log=lambda s: None)
    packed = resave(a.model, a.out / "packed-model", a.prune)
    results = {"prune_below": a.prune, "dense_mb": folder_mb(a.model), "packed_mb": folder_mb(packed),
               "dense_weights_mb": folder_mb(a.model / "model.safetensors"),
               "packed_weights_mb": folder_mb(packed / "model.safetensors"), "test": {}}
    for name, folder in (("dense", a.model), ("packed", packed)):
        for source in ("decoder", "head"):
            m = evaluate_model(folder, a.catalog, a.out / name / source, "test", source, settings)
            results["test"][f"{name}, {source}"] = {k: round(m[k], 4) for k in KEYS}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"model folder: {results['dense_mb']} MB as given -> {results['packed_mb']} MB packed "
          f"(weights {results['dense_weights_mb']} -> {results['packed_weights_mb']} MB)")
    print("| model, tags from | " + " | ".join(KEYS) + " |\n|---" * (len(KEYS) + 1) + "|")
    for name, m in results["test"].items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in KEYS) + " |")
    return results


if __name__ == "__main__":
    main()
