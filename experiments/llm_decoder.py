"""A pretrained LM (SmolLM2-135M, LoRA) against today's scratch GPT-2 as the tag decoder, on the same features.

    python experiments/llm_decoder.py --data ../shared/datasets/fashion-myntra --out OUT [--cache DIR]
        [--train-products 10000] [--full] [--backend smollm2-135m] [--heldout-keys "sleeve length,neck,..."]
        [--prior-weights 0.3,1,3] [--test-products N]

1. The Myntra catalog is cut to a seeded sample of --train-products train products (all with --full), with
   the full val and test splits. The held-out keys' tags are removed from every product: neither decoder
   ever sees them as targets.
2. Today's tagger (the offline preset: MiniLM + word scores, EfficientNet + colour, photo head, scratch
   GPT-2 decoder) is trained on that subset, its features encoded first (so its time is training).
3. The LM decoder is trained on the same tagger's frozen fused vectors plus each product's title and the
   start of its description
   (train/fit_lm_decoder.py): one epoch of LoRA by default; the epoch with the lowest val loss is kept.
4. Both decoders tag the test split. Scored on the decoder's own tags (no head, no filled keys): micro-
   and macro-F1 over the tags both were trained on; the LM's category is the `category:` tag it writes
   first. The LM's score floor is tuned on the first --floor-products val products (the scratch
   decoder's was tuned by its training).
   With --prior-weights, the LM is also fused with the tagger's tag and category heads at decoding
   (shallow fusion, LMDecoderConfig.prior_weight): the weight and its floor are tuned on the same val
   products, and the test split is decoded again with them (`llm_prior` in results.json).
5. Each held-out key is asked (` key:` after the title and description, the value written freely) for the test products
   that carry it, and scored against two baselines: the key's most frequent training value for every
   product, and the longest known value name found as whole words in the product's title and description.

Writes OUT/results.json (keys in the issue: scratch_*, llm_*, heldout_*, train_s_per_1k, tag_per_s, peak
memory, CPU time) and the LM decoder into OUT/scratch/model/lm_decoder/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import resource
import time
from collections import Counter
from pathlib import Path

import torch

from multimodal_tags.config import LMDecoderConfig
from multimodal_tags.data.catalog import read_catalog, write_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features import FeatureSource, RunConfig
from multimodal_tags.metrics import accuracy, macro_f1, prf
from multimodal_tags.models.presets import get_preset
from multimodal_tags.models.tag_tokenizer import CATEGORY_KEY, tag_key
from multimodal_tags.models.tagger import Tagger
from multimodal_tags.train.job import train_tagger
from multimodal_tags.train.fit_lm_decoder import (DecoderData, build_lm_decoder, fit_lm_decoder, floored_tags,
                                              generate_all, tagger_outputs, tune_floor, tune_prior_weight,
                                              with_prior)

from experiments.common import (Log, bench_train_config, markdown_table, myntra_catalog, quick_subset,
                                run_facts)

HELDOUT = ("sleeve length", "neck", "print or pattern type")


def subset_catalog(full: Path, out: Path, n_train: int | None, heldout: set[str], seed: int = 0) -> Path:
    """OUT/catalog-subset.jsonl: n_train sampled train products (all when None), every val and test
    product, the held-out keys' tags removed."""
    cat = read_catalog(full)
    train = [p for p in cat.products if p.split == "train"]
    if n_train is not None and n_train < len(train):
        train = sorted(random.Random(seed).sample(train, n_train), key=lambda p: p.id)
    keep = train + [p for p in cat.products if p.split in ("val", "test")]
    cut = [dataclasses.replace(p, tags=[t for t in p.tags if tag_key(t) not in heldout]) for p in keep]
    path = out / "catalog-subset.jsonl"
    write_catalog(cut, path, meta=cat.meta)
    return path


def decoder_scores(products, generated: list[dict[str, float]], floor: float) -> dict:
    """Micro/macro F1 of a decoder's tags (category tags aside) and its category accuracy."""
    gold = [set(p.tags) for p in products]
    pred = floored_tags(generated, floor)
    cats = [next((t.split(":", 1)[1] for t in g if tag_key(t) == CATEGORY_KEY), None) for g in generated]
    return {"micro_f1": prf(gold, pred)[2], "macro_f1": macro_f1(gold, pred),
            "category_acc": accuracy([p.category for p in products], cats)}


def scratch_decode(model: Tagger, source: FeatureSource, size: int = 256) -> tuple[list[dict], list[str], float]:
    """The scratch decoder's tags (with its tuned floor) for every product, the category head's answers,
    and decoding products/s (the decoder's generate alone)."""
    out, categories, seconds = [], [], 0.0
    for s in range(0, len(source), size):
        with torch.no_grad():
            fwd = model.eval()(source.subset(range(s, min(s + size, len(source)))).batch())
            categories += [model.categories[int(i)] for i in fwd["category_logits"].argmax(-1)]
            t0 = time.perf_counter()
            out += [dict(g) for g in model.decoder.generate(fwd["fused"], tag_bias=fwd["tag_bias"])]
            seconds += time.perf_counter() - t0
    floor = float(model.decoder_threshold)
    return [{t: p for t, p in g.items() if p >= floor} for g in out], categories, len(source) / max(seconds, 1e-9)


def llm_decode(decoder, data: DecoderData) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    out = generate_all(decoder, data)
    return out, len(data) / max(time.perf_counter() - t0, 1e-9)


def prior_fusion(decoder, model, data: dict, outputs: dict, test_products, alone: tuple[dict, float], a,
                 log) -> dict:
    """Shallow fusion with the tagger's heads (LMDecoderConfig.prior_weight): the weight of --prior-weights
    (and 0) and its floor tuned on the first --floor-products val products, then the test split decoded
    with it (where 0 wins, the LM alone's scores and rate, `alone`, stand). The decoder keeps the chosen
    weight and floor."""
    weights = [float(w) for w in a.prior_weights.split(",") if w.strip()]
    val = with_prior(decoder, model, data["val"].part(slice(0, a.floor_products)),
                     *(heads[:a.floor_products] for heads in outputs["val"][1:]))
    tuned = tune_prior_weight(decoder, val, weights)
    if tuned["weight"] == 0:
        scores, rate = alone
    else:
        tags, rate = llm_decode(decoder, with_prior(decoder, model, data["test"], *outputs["test"][1:]))
        scores = decoder_scores(test_products, tags, decoder.floor)
    log(f"LM decoder fused with the heads: {scores}, tuned {tuned}, {rate:.2f} products/s")
    return {**scores, **tuned, "tag_per_s": round(rate, 2)}


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def heldout_scores(decoder, full_products, test_rows: list[int], data: DecoderData, train_products,
                   keys, log) -> dict:
    """Per held-out key: F1 of the asked values, of the most frequent value, and of the best string match,
    over the test products that carry the key."""
    out = {"heldout_key_f1": {}, "heldout_baseline_f1": {}, "heldout_match_f1": {}, "heldout_products": {}}
    for key in keys:
        train_values = Counter(t for p in train_products for t in p.tags if tag_key(t) == key)
        rows = [i for i in test_rows if any(tag_key(t) == key for t in full_products[i].tags)]
        if not rows or not train_values:
            continue
        gold = [{t for t in full_products[i].tags if tag_key(t) == key} for i in rows]
        index = {i: j for j, i in enumerate(test_rows)}
        sel = [index[i] for i in rows]
        asked = decoder.ask(data.fused[sel], [data.titles[j] for j in sel], key, [data.descriptions[j] for j in sel])
        llm = [{f"{key}:{v}"} if v else set() for v, _ in asked]
        common = {train_values.most_common(1)[0][0]}
        names = sorted(train_values, key=lambda t: -len(t))
        match = []
        for i in rows:
            text = _words(f"{full_products[i].title} {full_products[i].description or ''}")
            hit = next((t for t in names if _words(t.split(':', 1)[1]) in text), None)
            match.append({hit} if hit else set())
        out["heldout_key_f1"][key] = prf(gold, llm)[2]
        out["heldout_baseline_f1"][key] = prf(gold, [common] * len(rows))[2]
        out["heldout_match_f1"][key] = prf(gold, match)[2]
        out["heldout_products"][key] = len(rows)
        log(f"held-out {key!r} on {len(rows)} products: LM {out['heldout_key_f1'][key]:.4f}, most frequent "
            f"{out['heldout_baseline_f1'][key]:.4f}, string match {out['heldout_match_f1'][key]:.4f}; "
            f"LM values: {Counter(v for v, _ in asked).most_common(5)}")
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="the Myntra data set folder")
    ap.add_argument("--catalog", type=Path, help="an imported catalog instead of --data (tests)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="feature cache (default OUT/features-cache)")
    ap.add_argument("--train-products", type=int, default=10000)
    ap.add_argument("--full", action="store_true", help="train on every train product (a GPU run)")
    ap.add_argument("--backend", default="smollm2-135m")
    ap.add_argument("--finetune", default="lora", choices=("lora", "full"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ask-practice", type=float, default=0.0,
                    help="share of train products that also teach an asked key (LMDecoderConfig.ask_practice)")
    ap.add_argument("--heldout-keys", default=",".join(HELDOUT))
    ap.add_argument("--prior-weights", default="",
                    help="shallow-fusion weights to try (e.g. 0.5,1,2): tuned on val, then the test split "
                         "decoded with the best as `llm_prior` (LMDecoderConfig.prior_weight)")
    ap.add_argument("--test-products", type=int, help="the first N test products only (probes; default all)")
    ap.add_argument("--floor-products", type=int, default=500, help="val products the LM's score floor is tuned on")
    ap.add_argument("--val-loss-products", type=int, default=1000, help="val products of the LM's validation loss")
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--tagger-epochs", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="600/150/150 products of the catalog (tests)")
    ap.add_argument("--allow-random-weights", action="store_true", help="tiny models (tests only)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    cpu0, t_run = time.process_time(), time.perf_counter()
    heldout = [k.strip() for k in a.heldout_keys.split(",") if k.strip()]
    with Log(a.out, name="llm_decoder.log") as log:
        full = a.catalog or myntra_catalog(a.data, a.out, log=log)
        if a.quick:
            full = quick_subset(full, a.out / "catalog-quick.jsonl")
        subset = subset_catalog(full, a.out, None if a.full else a.train_products, set(heldout))
        settings = RunConfig(cache_dir=a.cache or a.out / "features-cache", allow_random_weights=a.allow_random_weights,
                             progress=False, log=log)
        cfg, cat = get_preset(a.preset), read_catalog(subset)
        with FeatureCache(settings.cache_for(subset)) as fc:  # encoded first: the tagger's time is training
            source = FeatureSource.encode(cat.products, settings.encoders_for(cfg), fc, cat.image_root, cfg)
        t0 = time.perf_counter()
        tcfg = bench_train_config(epochs=a.tagger_epochs, masked_copies=0.0)
        train_tagger(subset, a.out / "scratch", cfg, tcfg, settings)
        n_train = sum(p.split == "train" for p in cat.products)
        scratch_train_s = time.perf_counter() - t0
        model = Tagger.load(a.out / "scratch" / "model")
        rows = {s: [i for i, p in enumerate(cat.products) if p.split == s] for s in ("train", "val", "test")}
        rows["test"] = rows["test"][:a.test_products]
        sources = {s: source.subset(r) for s, r in rows.items()}
        outputs = {s: tagger_outputs(model, sources[s]) for s in rows}
        data = {s: DecoderData.of(outputs[s][0], [cat.products[i] for i in r]) for s, r in rows.items()}
        test_products = [cat.products[i] for i in rows["test"]]

        scratch_tags, head_categories, scratch_rate = scratch_decode(model, sources["test"])
        scratch = decoder_scores(test_products, scratch_tags, 0.0)
        scratch["category_acc"] = accuracy([p.category for p in test_products], head_categories)  # its head
        log(f"scratch decoder: {scratch}, {scratch_rate:.1f} products/s")

        lcfg = LMDecoderConfig(backend=a.backend, finetune=a.finetune, epochs=a.epochs, ask_practice=a.ask_practice)
        decoder = build_lm_decoder(lcfg, model, data["train"].tags, allow_random=a.allow_random_weights)
        val_loss_part = data["val"].part(slice(0, a.val_loss_products))
        fit = fit_lm_decoder(decoder, data["train"], val_loss_part, log=log, device=a.device)
        floor = tune_floor(decoder.to("cpu"), data["val"].part(slice(0, a.floor_products)))
        llm_tags, llm_rate = llm_decode(decoder, data["test"])
        llm = decoder_scores(test_products, llm_tags, floor)
        log(f"LM decoder: {llm} at floor {floor}, {llm_rate:.2f} products/s")
        fusion = (prior_fusion(decoder, model, data, outputs, test_products, (llm, llm_rate), a, log)
                  if a.prior_weights else None)
        decoder.save(a.out / "scratch" / "model")

        original = read_catalog(full).products
        by_id = {p.id: i for i, p in enumerate(original)}
        held = heldout_scores(decoder, original, [by_id[p.id] for p in test_products], data["test"],
                              [original[by_id[cat.products[i].id]] for i in rows["train"]], heldout, log)
        with (a.out / "llm_test_tags.jsonl").open("w", encoding="utf-8") as f:
            for p, g in zip(test_products, llm_tags):
                f.write(json.dumps({"id": p.id, "tags": g}, ensure_ascii=False) + "\n")
    results = {
        "scratch_micro_f1": scratch["micro_f1"], "scratch_macro_f1": scratch["macro_f1"],
        "scratch_category_acc": scratch["category_acc"],  # the tagger's category head (the decoder names none)
        "llm_micro_f1": llm["micro_f1"], "llm_macro_f1": llm["macro_f1"], "llm_category_acc": llm["category_acc"],
        "llm_floor": floor, **({"llm_prior": fusion} if fusion else {}), **held,
        "train_s_per_1k": {"scratch": round(scratch_train_s / n_train * 1000, 2),
                           "llm": round(fit["seconds"] / max(fit["products_seen"], 1) * 1000, 2)},
        "tag_per_s": {"scratch": round(scratch_rate, 2), "llm": round(llm_rate, 2)},
        "llm_fit": fit, "train_products": n_train, "val_products": len(rows["val"]), "test_products": len(rows["test"]),
        "backend": a.backend, "finetune": a.finetune, "ask_practice": a.ask_practice,
        "base_sha256": decoder.base_sha256,
        "heldout_keys": heldout, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - t_run, 1),
        "run": run_facts(lcfg.precision),
    }
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(table(results) + "\n\n" + heldout_table(results))
    return results


def table(r: dict) -> str:
    """Both decoders on the test split (docs/llm_decoder.md)."""
    llm = f"{r['backend']} ({r['finetune']})"
    rows = [{"decoder": "scratch GPT-2", "tag micro-F1": r["scratch_micro_f1"], "tag macro-F1": r["scratch_macro_f1"],
             "category acc": r.get("scratch_category_acc"), "train s / 1k products": r["train_s_per_1k"]["scratch"],
             "tagging products/s": r["tag_per_s"]["scratch"]},
            {"decoder": llm, "tag micro-F1": r["llm_micro_f1"], "tag macro-F1": r["llm_macro_f1"],
             "category acc": r["llm_category_acc"], "train s / 1k products": r["train_s_per_1k"]["llm"],
             "tagging products/s": r["tag_per_s"]["llm"]}]
    return markdown_table(rows, {"train s / 1k products": 1, "tagging products/s": 1})


def heldout_table(r: dict) -> str:
    """The held-out keys, asked of the LM, against the two baselines (docs/llm_decoder.md)."""
    rows = [{"held-out key": k, "test products": r["heldout_products"][k], "LM asked": r["heldout_key_f1"][k],
             "most frequent value": r["heldout_baseline_f1"][k], "string match": r["heldout_match_f1"][k]}
            for k in r["heldout_key_f1"]]
    return markdown_table(rows)


if __name__ == "__main__":
    main()
