"""The lean model folder: size and test metrics of a model saved dense and saved packed, side by side.

    python experiments/model_size.py --model runs/myntra-bench/model --catalog runs/myntra-bench/catalog.jsonl \
        --cache runs/cache --out runs/model-size

Loads a model folder, saves it again (the current format packs the word-score table: weights at or
below `word_scores.PRUNE_BELOW` dropped, the rest as float16 in sparse rows), and evaluates both on the
catalog's test split from the same feature cache (GPT-2 tags and tag-head tags). `--half-encoder`
adds the folder with its bundled fine-tuned text encoder stored in float16 (its test texts are
encoded again: other weights, another cache key). Prints the sizes and
metrics and writes OUT/results.json; the prediction files of both are in OUT/dense and OUT/packed.
A model already packed is measured against itself re-saved with nothing pruned (--prune 0).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from multimodal_tags.eval.evaluate import evaluate_model
from multimodal_tags.features import RunConfig
from multimodal_tags.models import word_scores
from multimodal_tags.models.tagger import Tagger

from experiments.common import markdown_table

KEYS = ("category_accuracy", "tags_micro_precision", "tags_micro_recall", "tags_micro_f1", "tags_macro_f1")


def folder_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 1)


def resave(model: Path, out: Path, prune: float, half_encoder: bool = False) -> Path:
    """The model folder written again by this version, pruning the word scores at `prune`; with
    `half_encoder`, its bundled text encoder stored in float16 (as fine-tuning now writes it)."""
    Tagger.load(model).save(out, word_score_prune=prune)
    for extra in (p for p in model.iterdir() if p.name not in {"config.json", "model.safetensors"}):
        if not (out / extra.name).exists():  # bundled text encoder, tokenizer, lineage
            (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, out / extra.name)
    if half_encoder and (out / "text_encoder" / "model.safetensors").exists():
        import torch
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(out / "text_encoder", dtype=torch.float32)
        encoder.to(torch.float16).save_pretrained(out / "text_encoder")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="feature cache (default: beside the catalog)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prune", type=float, nargs="+", default=[word_scores.PRUNE_BELOW],
                    help="word-score weights at or below this are dropped (several: one packed model each)")
    ap.add_argument("--half-encoder", action="store_true",
                    help="also: the first --prune with the bundled text encoder stored in float16")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    settings = RunConfig(cache_dir=a.cache, progress=False, log=lambda s: None)
    models = {"dense": a.model} | {f"packed {p:g}": resave(a.model, a.out / f"packed-{p:g}", p) for p in a.prune}
    if a.half_encoder:
        p = a.prune[0]
        models[f"packed {p:g}, text encoder in float16"] = resave(a.model, a.out / f"packed-{p:g}-half", p, True)
    results = {"size_mb": {name: folder_mb(folder) for name, folder in models.items()},
               "weights_mb": {name: folder_mb(folder / "model.safetensors") for name, folder in models.items()},
               "test": {}}
    for name, folder in models.items():
        for source in ("decoder", "head"):
            m = evaluate_model(folder, a.catalog, a.out / name.replace(" ", "-") / source, "test", source, settings)
            results["test"][f"{name}, {source}"] = {k: round(m[k], 4) for k in KEYS}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("model folder MB:", results["size_mb"], "of which model.safetensors:", results["weights_mb"])
    print(markdown_table([{"model, tags from": name, **{k: m[k] for k in KEYS}} for name, m in results["test"].items()]))
    return results


if __name__ == "__main__":
    main()
