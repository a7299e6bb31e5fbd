"""Our CLIP (EfficientNet-Lite0 + MiniLM towers, trained with open_clip) on Myntra test.

    python experiments/clip_eval.py --data ../shared/datasets/fashion-myntra --out OUT [--cache DIR]

From an empty OUT it imports the catalog, trains the CLIP on train photo-name pairs (locked towers,
`print or pattern type` kept out of every caption), selects it on val, and measures on test (4,511):
- zero-shot category accuracy over the train categories and colour accuracy over the colour values,
  prompts only (`zero_shot_category_acc`, `zero_shot_colour_acc`);
- name -> photo and photo -> name retrieval among the test photos (`retrieval_r1`, `retrieval_r10`,
  `image_to_text_r1`, `image_to_text_r10`);
- open vocabulary: a tagger trained without any `print or pattern type:*` tag, that key produced by
  zero-shot CLIP (per-tag thresholds on val), micro-F1 against predicting its most frequent value
  (`open_vocab_f1`, `open_vocab_baseline_f1`), over all test products and over those with the key;
- the tagger with the CLIP photo vector instead of, and beside, the EfficientNet vector:
  `image_only_tag_f1`, `fused_tag_f1`, `fused_category_acc` (and the EfficientNet rows, same recipe).
Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


from multimodal_tags.data.catalog import read_catalog, write_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features.encode import encode_and_load
from multimodal_tags.metrics import prf, retrieval_recall
from multimodal_tags.models.factory import create_image_encoder
from multimodal_tags.config import WordScoreConfig
from multimodal_tags.models.presets import get_preset
from multimodal_tags.models.tag_tokenizer import tag_key
from multimodal_tags.models.product_clip import SPEC_PREFIX, WITH_TRUNK
from multimodal_tags.models.zero_shot import ZeroShotTags
from multimodal_tags.train.clip_train import ClipTrainConfig, train_clip

from experiments.common import MYNTRA, Log, bench_train_config, markdown_table, myntra_catalog, run_dir
from experiments.runs import train_all

HOLDOUT_KEY = "print or pattern type"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(MYNTRA))
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", help="feature cache (default OUT/features-cache); a Myntra benchmark cache is reused")
    ap.add_argument("--clip", help="evaluate this trained CLIP folder instead of training one into OUT/clip")
    ap.add_argument("--clip-epochs", type=int, default=8)
    ap.add_argument("--unlock-text", type=int, default=0, help="also tune the last N text-tower layers")
    ap.add_argument("--unlock-image", type=int, default=0, help="also tune the last N image-trunk stages")
    ap.add_argument("--image-size", type=int, help="photo side for the image tower (default: the config's, 224)")
    ap.add_argument("--tower-lr", type=float, default=5e-5, help="learning rate of unlocked tower layers")
    ap.add_argument("--attribute-captions", action="store_true", help="pair photos with tag phrases too")
    ap.add_argument("--tagger-epochs", type=int, default=8)
    ap.add_argument("--no-tagger", action="store_true", help="skip the four tagger trainings (CLIP metrics only)")
    ap.add_argument("--quick", action="store_true", help="a small subset, for tests")
    return ap.parse_args(argv)


def _image_vectors(encoder, products, cache: FeatureCache, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised CLIP photo vectors (through the feature cache) and the has-photo mask."""
    feats = encode_and_load(products, cache, root, image_encoder=encoder)
    x = feats["image"]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), feats["has_image"]


def _zero_shot_accuracy(encoder, classes: list[str], gold: list[str | None], x: np.ndarray,
                        has: np.ndarray) -> float:
    """Share of photos whose most similar class prompt ensemble is their class (products with one)."""
    zs = ZeroShotTags.build(encoder, classes)
    pred = np.array(classes)[zs.similarities(x).argmax(1)]
    ok = [i for i, g in enumerate(gold) if g in classes and has[i]]
    return float(np.mean([pred[i] == gold[i] for i in ok]))


def _retrieval(encoder, names: list[str], x: np.ndarray) -> dict[str, float]:
    text = torch.cat([encoder.encode_prompts(names[s:s + 512]) for s in range(0, len(names), 512)]).numpy()
    t2i, i2t = retrieval_recall(text @ x.T), retrieval_recall(x @ text.T)
    return {"retrieval_r1": t2i[1], "retrieval_r10": t2i[10], "image_to_text_r1": i2t[1], "image_to_text_r10": i2t[10]}


def _key_values(products, key: str) -> list[str]:
    """The tags of `key` in the train split, most frequent first."""
    counts: dict[str, int] = {}
    for p in products:
        if p.split == "train":
            for t in p.tags:
                if tag_key(t) == key:
                    counts[t] = counts.get(t, 0) + 1
    return sorted(counts, key=lambda t: -counts[t])


def _open_vocab(encoder, tags: list[str], val, test, x_val, x_test, has_val, has_test) -> dict:
    """Zero-shot `tags` (one key): thresholds tuned on val; at most one value per product (the most
    similar over its threshold). F1 against predicting the most frequent value, over all test products
    and over those that have the key. Returns ({test id: predicted tags}, metrics)."""
    zs = ZeroShotTags.build(encoder, tags)
    zs.calibrate(x_val[has_val], np.array([[t in p.tags for t in tags] for p in val])[has_val])
    sims = zs.similarities(x_test)
    over = (sims >= zs.thresholds[None, :]) & has_test[:, None]
    best = np.where(over, sims, -np.inf).argmax(1)
    pred = [{tags[best[i]]} if over[i].any() else set() for i in range(len(test))]
    top1 = [{tags[int(sims[i].argmax())]} for i in range(len(test))]
    gold = [set(p.tags) & set(tags) for p in test]
    with_key = [i for i, g in enumerate(gold) if g]
    frequent = [{tags[0]}] * len(test)
    predictions = {p.id: sorted(t) for p, t in zip(test, pred)}
    return predictions, {"open_vocab_key": HOLDOUT_KEY, "open_vocab_values": len(tags),
            "open_vocab_f1": prf(gold, pred)[2], "open_vocab_baseline_f1": prf(gold, frequent)[2],
            "open_vocab_f1_with_key": prf([gold[i] for i in with_key], [top1[i] for i in with_key])[2],
            "open_vocab_baseline_f1_with_key": prf([gold[i] for i in with_key], [frequent[i] for i in with_key])[2],
            "open_vocab_test_products_with_key": len(with_key)}


def clip_metrics(clip_dir: Path, catalog_path: Path, cache_dir: Path, log) -> tuple[dict, dict]:
    """Zero-shot, retrieval and open-vocabulary numbers of the CLIP on the catalog's test split, and the
    zero-shot predictions of the held-out key."""
    catalog = read_catalog(catalog_path)
    encoder = create_image_encoder(f"{SPEC_PREFIX}{clip_dir}").set_precision("auto")
    val = [p for p in catalog.products if p.split == "val"]
    test = [p for p in catalog.products if p.split == "test"]
    with FeatureCache(cache_dir) as cache:
        x_val, has_val = _image_vectors(encoder, val, cache, catalog.image_root)
        x_test, has_test = _image_vectors(encoder, test, cache, catalog.image_root)
    categories = sorted({p.category for p in catalog.products if p.split == "train" and p.category})
    colours = _key_values(catalog.products, "colour")
    colour_of = [next((t for t in p.tags if t.startswith("colour:")), None) for p in test]
    shown = [i for i in range(len(test)) if has_test[i]]
    predictions, open_vocab = _open_vocab(encoder, _key_values(catalog.products, HOLDOUT_KEY), val, test, x_val,
                                          x_test, has_val, has_test)
    out = {"test_products": len(test), "test_photos": len(shown), "categories": len(categories),
           "colours": len(colours),
           "zero_shot_category_acc": _zero_shot_accuracy(encoder, categories, [p.category for p in test],
                                                         x_test, has_test),
           "zero_shot_colour_acc": _zero_shot_accuracy(encoder, colours, colour_of, x_test, has_test),
           **_retrieval(encoder, [test[i].title for i in shown], x_test[shown]), **open_vocab}
    log("clip: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return out, predictions


def _without_key(catalog_path: Path, key: str) -> Path:
    """The catalog with every tag of `key` removed (the tagger never learns it)."""
    catalog = read_catalog(catalog_path)
    for p in catalog.products:
        p.tags = [t for t in p.tags if tag_key(t) != key]
    out = catalog_path.with_name(f"{catalog_path.stem}-without-{key.replace(' ', '-')}.jsonl")
    meta = dict(catalog.meta, tag_vocab=[t for t in catalog.meta.get("tag_vocab", []) if tag_key(t) != key])
    write_catalog(catalog.products, out, meta=meta)
    return out


def _tagger_jobs(a, out: Path, catalog: Path, cache: Path, clip_dir: Path) -> list[dict]:
    """Image-only with the CLIP vector and with EfficientNet's; fused (text + CLIP beside EfficientNet) on
    all tags, and on the catalog without the held-out key (for the combined open-vocabulary output)."""
    clip, beside = f"{SPEC_PREFIX}{clip_dir}", f"{SPEC_PREFIX}{clip_dir}{WITH_TRUNK}"
    dim = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"]
    fused = get_preset("offline")
    if a.quick:
        fused = dataclasses.replace(fused, lexical_buckets=1 << 14)
    image_only = dataclasses.replace(fused, text_encoder="none", word_scores=WordScoreConfig(),
                                     lexical_buckets=0)
    tcfg = bench_train_config(a.quick, a.tagger_epochs)
    runs = [("fused, CLIP beside EfficientNet", catalog, dataclasses.replace(fused, image_encoder=beside,
                                                                             image_dim=1280 + dim)),
            ("image only, CLIP", catalog, dataclasses.replace(image_only, image_encoder=clip, image_dim=dim)),
            ("image only, EfficientNet", catalog, image_only),
            (f"fused, CLIP beside EfficientNet, without {HOLDOUT_KEY}", _without_key(catalog, HOLDOUT_KEY),
             dataclasses.replace(fused, image_encoder=beside, image_dim=1280 + dim))]
    return [{"name": name, "out": str(out), "run_dir": str(run_dir(out, name)),
             "catalog": str(cat), "cache": str(cache), "cfg": cfg, "tcfg": dataclasses.replace(tcfg),
             "modalities": "both", "finetune": None, "finetune_image": None,
             "hide_modalities": False} for name, cat, cfg in runs]


def _combined(run_dir: Path, catalog_path: Path, zero_shot: dict[str, list[str]]) -> dict:
    """Tag F1 on test of the tagger that never saw the held-out key, alone and with its zero-shot tags."""
    gold = {p.id: set(p.tags) for p in read_catalog(catalog_path).products if p.split == "test"}
    rows = [json.loads(line) for line in open(run_dir / "test_predictions_decoder.jsonl", encoding="utf-8")]
    alone = [set(r["tags"]) for r in rows]
    both = [set(r["tags"]) | set(zero_shot.get(r["id"], [])) for r in rows]
    truth = [gold[r["id"]] for r in rows]
    return {"open_vocab_tagger_alone_tag_f1": prf(truth, alone)[2], "open_vocab_combined_tag_f1": prf(truth, both)[2]}


def tagger_metrics(a, out: Path, catalog: Path, cache: Path, clip_dir: Path, zero_shot: dict, log) -> tuple:
    """Train the four taggers (two at a time); (results, table rows)."""
    jobs = _tagger_jobs(a, out, catalog, cache, clip_dir)
    done = dict(zip([j["name"] for j in jobs], train_all(jobs, 2, catalog, log)))
    rows = [{"model": name, "val tag F1": r["metrics"]["val"]["decoder"]["tags_micro_f1"],
             "test acc": r["metrics"]["test"]["decoder"]["category_accuracy"],
             "test tag F1": r["metrics"]["test"]["decoder"]["tags_micro_f1"], "train min": r["seconds"] / 60}
            for name, r in done.items()]
    test = {row["model"]: row for row in rows}
    fused, image_clip, image_eff = (test["fused, CLIP beside EfficientNet"], test["image only, CLIP"],
                                    test["image only, EfficientNet"])
    results = {"image_only_tag_f1": image_clip["test tag F1"], "image_only_effnet_tag_f1": image_eff["test tag F1"],
               "image_only_category_acc": image_clip["test acc"], "image_only_effnet_category_acc": image_eff["test acc"],
               "fused_tag_f1": fused["test tag F1"], "fused_category_acc": fused["test acc"],
               **_combined(Path(jobs[-1]["run_dir"]), catalog, zero_shot)}
    return results, rows


def _train(a, catalog: Path, out: Path, cache: Path, log) -> tuple[Path, float]:
    cfg = ClipTrainConfig(epochs=2 if a.quick else a.clip_epochs, batch_size=64 if a.quick else 1024,
                          holdout_keys=(HOLDOUT_KEY,), unlock_text_layers=a.unlock_text,
                          unlock_image_stages=a.unlock_image, image_size=a.image_size, tower_lr=a.tower_lr,
                          attribute_captions=a.attribute_captions)
    t0 = time.perf_counter()
    folder = train_clip(read_catalog(catalog), out / "clip", cache, cfg, log=log)
    return folder, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with Log(out) as log:
        t0 = time.perf_counter()
        catalog = myntra_catalog(Path(a.data), out, a.quick, log)
        cache = Path(a.cache or out / "features-cache")
        clip_dir, seconds = (Path(a.clip), None) if a.clip else _train(a, catalog, out, cache, log)
        results = {"clip": str(clip_dir), "clip_train_min": None if seconds is None else seconds / 60,
                   "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
        metrics, zero_shot = clip_metrics(clip_dir, catalog, cache, log)
        results.update(metrics)
        rows = []
        if not a.no_tagger:
            tagger, rows = tagger_metrics(a, out, catalog, cache, clip_dir, zero_shot, log)
            results.update(tagger)
        results["total_min"] = (time.perf_counter() - t0) / 60
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        md = markdown_table([{"metric": k, "value": v} for k, v in results.items() if isinstance(v, float)])
        (out / "results.md").write_text(md + ("\n\n" + markdown_table(rows) if rows else "") + "\n")
        print(md)
        return results


if __name__ == "__main__":
    main()
