"""A shop the model never saw, learned from a few hundred reviews (issue 29).

    python experiments/new_shop.py --data ../shared/datasets/hm-interactions --model MODEL_DIR --out OUT [--cache DIR]

The Myntra benchmark's model tags H&M's 4,903 articles from name and description (no photos). H&M's
own product type, colour group and index group are mapped to the Myntra vocabulary by
experiments/hm_map.py (unmapped ones are left out of the scores and counted). A fixed 50/50 split by a
hash of the article id: a review pool and an untouched test half.

A simulated reviewer answers from H&M's labels as the review page's events would: the category is
accepted, or rejected and the right one added (`category:NAME`); each shown tag of a mapped key
(colour, gender) is accepted or rejected, and the right value added when it was not shown. It reviews
N = 100, 300 and 1,000 products of the pool, taken in the review queue's order
(feedback/review_queue.py, computed once on the unreviewed pool) and, separately, at random; after
each N, `mmtags adapt` (adapt_model, default settings, from the original model) learns from the
events. Scores on the test half before and after: category accuracy, colour accuracy (the row's most
probable colour tag; none given counts as wrong) and micro-F1 over the mapped keys' tags, each with a
95% bootstrap interval over products; and the Myntra test tag micro-F1 of every adapted model.
Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.schema import Product
from multimodal_tags.features import RunConfig
from multimodal_tags.feedback.adapt import AdaptConfig, adapt_model
from multimodal_tags.feedback.events import FeedbackEvent
from multimodal_tags.feedback.feedback_store import FeedbackStore
from multimodal_tags.feedback.review_queue import review_cards
from multimodal_tags.inference.batch_tagger import BatchTagger
from multimodal_tags.metrics import prf
from multimodal_tags.models.tag_tokenizer import tag_key
from multimodal_tags.models.tagger import Tagger
from multimodal_tags.tagging.tag_store import TagStore

from experiments.common import benchmark_catalog, default_cache, markdown_table, run_facts
from experiments.hm_map import KEYS, articles, half, truth

SIZES = (100, 300, 1000)
BOOTSTRAP = 1000


def shop_products(data: Path, model: Tagger) -> tuple[list[Product], dict]:
    """H&M's articles as products labelled in the model's vocabulary (category where mapped and known to
    the model; tags of the mapped keys), split into pool and test; and the counts of what was mapped."""
    categories = {c.lower(): c for c in model.categories}
    vocab = {t.lower(): t for t in model.tags}
    rows = articles(data)
    products, counts = [], {"articles": len(rows), "category_mapped": 0, "colour_mapped": 0, "gender_mapped": 0}
    for r in rows:
        category, values = truth(r)
        category = categories.get((category or "").lower())
        tags = [vocab[t] for k, v in values.items() if (t := f"{k}:{v}".lower()) in vocab]
        counts["category_mapped"] += category is not None
        for key in KEYS:
            counts[f"{key}_mapped"] += any(tag_key(t) == key for t in tags)
        products.append(Product(id=r["article_id"], title=r["prod_name"], description=r["detail_desc"],
                                category=category, tags=tags, split=half(r)))
    return products, counts


def tag_rows(model_dir: Path, products: list[Product], cache: Path, root: Path) -> dict[str, dict]:
    """The model's output rows by product id."""
    tagger = BatchTagger(model_dir, cache, RunConfig(cache_dir=cache, progress=False, log=lambda s: None))
    rows = {}
    for i in range(0, len(products), 512):
        rows.update((r["id"], r) for r in tagger.tag(products[i:i + 512], root))
    return rows


def _interval(per_product: np.ndarray, stat, rng) -> list[float]:
    picks = rng.integers(0, len(per_product), size=(BOOTSTRAP, len(per_product)))
    values = np.array([stat(per_product[p]) for p in picks])
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def scores(rows: dict[str, dict], products: list[Product], seed: int = 0) -> dict:
    """Category accuracy, colour accuracy and micro-F1 over the mapped keys' tags, with 95% intervals."""
    rng = np.random.default_rng(seed)
    cat = np.array([rows[p.id]["category"] == p.category for p in products if p.category], dtype=float)
    colour = []
    counts = []
    for p in products:
        mine = {t for t in rows[p.id]["tags"] if tag_key(t) in KEYS}
        gold = set(p.tags)
        counts.append((len(mine & gold), len(mine - gold), len(gold - mine)))
        true_colour = [t for t in p.tags if tag_key(t) == "colour"]
        if true_colour:
            given = [t for t in rows[p.id]["tags"] if tag_key(t) == "colour"]  # rows list tags by score
            colour.append(float(bool(given) and given[0] == true_colour[0]))
    counts, colour = np.array(counts, dtype=float), np.array(colour)

    def micro(c: np.ndarray) -> float:
        tp, fp, fn = c.sum(axis=0)
        return 2 * tp / max(2 * tp + fp + fn, 1)

    return {"category_acc": round(float(cat.mean()), 4), "category_acc_interval": _interval(cat, np.mean, rng),
            "colour_acc": round(float(colour.mean()), 4), "colour_acc_interval": _interval(colour, np.mean, rng),
            "micro_f1": round(micro(counts), 4), "micro_f1_interval": _interval(counts, micro, rng),
            "products": len(products), "with_category": len(cat), "with_colour": len(colour)}


def review_events(product: Product, row: dict, prefix: str) -> list[FeedbackEvent]:
    """What the simulated reviewer does on one card: judge the category and each shown tag of a mapped key,
    and add the right values the card lacks."""
    judged: list[tuple[str, str]] = []
    if product.category:
        shown = f"category:{row['category']}"
        judged += ([(shown, "accept")] if row["category"] == product.category else
                   [(shown, "reject"), (f"category:{product.category}", "add")])
    shown_tags = [t for t in row["tags"] if tag_key(t) in KEYS]
    judged += [(t, "accept" if t in product.tags else "reject") for t in shown_tags]
    judged += [(t, "add") for t in product.tags if t not in shown_tags]
    return [FeedbackEvent(event_id=f"{prefix}:{product.id}:{i}", user="reviewer", product=product.id, tag=t,
                          action=a) for i, (t, a) in enumerate(judged)]


def orders(store: Path, pool: list[Product], seed: int = 0) -> dict[str, list[str]]:
    """The pool's ids in the review queue's order and in a random one."""
    ids = {p.id for p in pool}
    with FeedbackStore(store) as fb:
        queue = [c["id"] for c in review_cards(fb.tags, fb) if c["id"] in ids]
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    return {"queue": queue, "random": shuffled}


def run_order(name: str, order: list[str], a, ctx: dict) -> dict:
    """Review the first N of `order` for each N, adapting after each; scores of every adapted model."""
    store = a.out / f"reviews-{name}.db"
    shutil.copy(ctx["store"], store)
    by_id, out, done = {p.id: p for p in ctx["pool"]}, {}, 0
    for n in ctx["sizes"]:
        with FeedbackStore(store) as fb:
            events = [e for pid in order[done:n] for e in review_events(by_id[pid], ctx["rows"][pid], name)]
            fb.add(events)
        done = n
        child = a.out / "models" / f"{name}-{n}"
        t0 = time.perf_counter()
        lineage = adapt_model(a.model, store, child, ctx["settings"], ctx["adapt"])
        rows = tag_rows(child, ctx["test"], ctx["cache"], ctx["root"])
        out[str(n)] = {**scores(rows, ctx["test"]), "gate_passed": lineage["gate"]["passed"],
                       "adapt_s": round(time.perf_counter() - t0, 1),
                       "myntra_micro_f1": myntra_f1(child, ctx)}
        ctx["log"](f"{name} {n}: {json.dumps(out[str(n)])}")
    return out


def myntra_f1(model_dir: Path, ctx: dict) -> float:
    """Tag micro-F1 of a model on the Myntra test split (its photos too: the model's own shop)."""
    rows = tag_rows(model_dir, ctx["myntra_test"], ctx["cache"], ctx["myntra_root"])
    return round(prf([set(p.tags) for p in ctx["myntra_test"]], [set(rows[p.id]["tags"]) for p in ctx["myntra_test"]])[2], 4)


def prepare(a) -> dict:
    """Products, the base model's rows in a store, and what every run shares."""
    model, defaults = Tagger.load(a.model), AdaptConfig()
    products, counts = shop_products(a.data, model)
    if a.quick:
        products = products[:400]
    pool, test = [p for p in products if p.split == "pool"], [p for p in products if p.split == "test"]
    catalog = benchmark_catalog(a.model, None, a.out)
    cache = Path(a.cache) if a.cache else default_cache(a.model, catalog)
    myntra = read_catalog(catalog)
    myntra_test = [p for p in myntra.products if p.split == "test"][:300 if a.quick else None]
    ctx = {"pool": pool, "test": test, "counts": counts, "cache": cache, "root": a.out, "log": print,
           "myntra_test": myntra_test, "myntra_root": myntra.image_root, "sizes": a.sizes,
           "settings": RunConfig(cache_dir=cache, progress=False, log=lambda s: None),
           "adapt": AdaptConfig(catalog=catalog, epochs=1 if a.quick else a.adapt_epochs, lr=a.adapt_lr,
                                head_lrs=defaults.head_lrs if a.head_lr is None else (a.head_lr,),
                                replay=a.adapt_replay, gate_val_limit=300 if a.quick else None)}
    ctx["rows"] = tag_rows(a.model, pool + test, cache, a.out)
    ctx["store"] = a.out / "base.db"
    ctx["store"].unlink(missing_ok=True)
    with TagStore(ctx["store"]) as store:
        store.write([ctx["rows"][p.id] for p in pool], {}, pool)  # the review queue holds the pool only
    return ctx


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the hm-interactions folder")
    ap.add_argument("--model", type=Path, required=True, help="the Myntra benchmark's model folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", help="feature cache (default: the benchmark's, beside its model)")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=list(SIZES))
    ap.add_argument("--quick", action="store_true", help="400 articles, 300 Myntra test products (smoke test)")
    defaults = AdaptConfig()
    ap.add_argument("--adapt-lr", type=float, default=defaults.lr, help="adapt's decoder learning rate")
    ap.add_argument("--head-lr", type=float, help="the heads' learning rate (default: adapt chooses among its own)")
    ap.add_argument("--adapt-epochs", type=int, default=defaults.epochs)
    ap.add_argument("--adapt-replay", type=float, default=defaults.replay)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ctx = prepare(a)
    before = scores(ctx["rows"], ctx["test"])
    after = {name: run_order(name, order, a, ctx) for name, order in orders(ctx["store"], ctx["pool"]).items()}
    results = {"before": before, "after": after, "mapped": ctx["counts"],
               "pool": len(ctx["pool"]), "test": len(ctx["test"]),
               "queue_beats_random": all(after["queue"][str(n)][m] > after["random"][str(n)][m]
                                         for n in ctx["sizes"] for m in ("category_acc", "colour_acc")),
               "myntra_micro_f1_before": myntra_f1(a.model, ctx),
               "myntra_micro_f1_after": min(r["myntra_micro_f1"] for runs in after.values() for r in runs.values()),
               "minutes": round((time.perf_counter() - t0) / 60, 1), "run": run_facts()}
    (a.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (a.out / "results.md").write_text(table(results) + "\n")
    print(table(results))
    return results


def table(r: dict) -> str:
    """Before and after each N, for both orders."""
    rows = [{"reviews": "none (the Myntra model)", **_cells(r["before"], r["myntra_micro_f1_before"])}]
    for name, runs in r["after"].items():
        rows += [{"reviews": f"{n}, {name} order", **_cells(s, s["myntra_micro_f1"])} for n, s in runs.items()]
    return markdown_table(rows)


def _cells(s: dict, myntra: float) -> dict:
    return {"category acc": f"{s['category_acc']:.4f} ({s['category_acc_interval'][0]:.3f} .. "
                            f"{s['category_acc_interval'][1]:.3f})",
            "colour acc": f"{s['colour_acc']:.4f} ({s['colour_acc_interval'][0]:.3f} .. {s['colour_acc_interval'][1]:.3f})",
            "micro-F1": f"{s['micro_f1']:.4f}", "Myntra test micro-F1": myntra}


if __name__ == "__main__":
    main()
