"""Personalisation on real shoppers: rank a held-out purchase from the rest of a customer's purchases.

    python experiments/personalization.py --data ../shared/datasets/hm-interactions --model MODEL_DIR --out OUT

H&M articles are imported with the generic importer (name and description as text; H&M's attributes
as tags, kept for comparison only: they are never the model's input) and tagged by the Myntra model
(a shop it never saw). For every customer with >= 3 purchased articles, one purchase is held out
(fixed seed) and ranked among 99 articles that customer did not buy (fixed seed), from the other
purchases. Profiles are built from the non-held-out purchases only. Methods: random; popularity;
the profile over the model's tags; the profile over H&M's attributes; mean text-embedding similarity
to the history; the best mix (weights chosen on the other half of the customers: cross-fitted).
HR@10 and NDCG@10 with 95% bootstrap intervals over customers. Writes OUT/results.json (ndcg10,
hr10, intervals), OUT/results.md and OUT/personalization.png.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.importers import generic, run_import
from multimodal_tags.features import RunConfig
from multimodal_tags.files import remove_sqlite
from multimodal_tags.inference.batch_tagger import BatchTagger
from multimodal_tags.personal.profiles import ProfileConfig, match_score

from experiments.common import markdown_table

HM_ATTRIBUTES = ("product_type_name", "product_group_name", "graphical_appearance_name", "colour_group_name",
                 "perceived_colour_master_name", "department_name", "index_name", "section_name",
                 "garment_group_name")
CANDIDATES = 99
K = 10
MIX_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)


def import_articles(data: Path, out: Path) -> Path:
    """H&M's articles as a catalog (text: name + description; tags: H&M's attributes)."""
    catalog = out / "hm-articles.jsonl"
    if not catalog.exists():
        source = generic.read(data / "articles.csv.gz", mapping="id=article_id,title=prod_name,description=detail_desc",
                              tag_columns=",".join(HM_ATTRIBUTES), auto_split=False)
        print(run_import(source, catalog).report.summary())
    return catalog


def model_tags(model: Path, catalog: Path, cache: Path, out: Path) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """The model's tags (with its predicted category as `category:...`) and text vectors of every article."""
    cat = read_catalog(catalog)
    tagger = BatchTagger(model, cache, RunConfig(cache_dir=cache, progress=False, log=lambda s: None))
    tags, vectors = {}, {}
    for i in range(0, len(cat.products), 256):
        batch = cat.products[i:i + 256]
        rows = tagger.tag(batch, cat.image_root)
        text = tagger.features(batch, cat.image_root).text.numpy()
        for p, r, v in zip(batch, rows, text):  # the predicted category counts as a tag too
            tags[p.id] = [*r["tags"], f"category:{r['category'].lower()}"]
            vectors[p.id] = v / (np.linalg.norm(v) + 1e-9)
    return tags, vectors


def purchases(data: Path) -> dict[str, list[str]]:
    """customer -> purchased articles (distinct, in purchase order)."""
    out: dict[str, list[str]] = defaultdict(list)
    with gzip.open(data / "transactions.csv.gz", "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            items = out[row["customer_id"]]
            if row["article_id"] not in items:
                items.append(row["article_id"])
    return dict(out)


def leave_one_out(bought: dict[str, list[str]], articles: list[str], seed: int = 0) -> list[dict]:
    """Per customer with >= 3 articles: one held out, the rest as history, and 99 candidates they never
    bought (the held-out article first among the candidates)."""
    rng, cases = random.Random(seed), []
    for customer in sorted(bought):
        items = bought[customer]
        if len(items) < 3:
            continue
        held = rng.choice(items)
        others = [a for a in rng.sample(articles, CANDIDATES + len(items)) if a not in items][:CANDIDATES]
        cases.append({"customer": customer, "held": held, "history": [a for a in items if a != held],
                      "candidates": [held, *others]})
    return cases


def profile_scores(cases: list[dict], bought: dict[str, list[str]], tags: dict[str, list[str]], out: Path,
                   name: str) -> list[np.ndarray]:
    """Candidate scores from each customer's profile over `tags` (histories only; no held-out article)."""
    from multimodal_tags.personal.profiles import Profiles
    from multimodal_tags.tagging.tag_store import TagStore

    held = {c["customer"]: c["held"] for c in cases}
    path = out / f"profiles-{name}.db"
    remove_sqlite(path)
    n_docs, df = len(tags), Counter(t for ts in tags.values() for t in set(ts))
    idf = {t: math.log(n_docs / c) for t, c in df.items()}
    with TagStore(path) as store:
        profiles = Profiles(store, ProfileConfig(shrinkage=2.0))
        profiles.add_many((f"{customer}:{a}", customer, "purchase", tags.get(a, []), 0.0)
                          for customer, items in bought.items() for a in items if a != held.get(customer))
        return [np.array([match_score(tags.get(a, []), profiles.affinities(c["customer"], now=0.0), idf)
                          for a in c["candidates"]]) for c in cases]


def rank_of_held(scores: np.ndarray) -> float:
    """0-based rank of candidate 0 (ties share the middle rank)."""
    above, ties = (scores[1:] > scores[0]).sum(), (scores[1:] == scores[0]).sum()
    return float(above + ties / 2)


def metrics(ranks: np.ndarray, seed: int = 0) -> dict:
    """HR@10 and NDCG@10 with 95% bootstrap intervals over customers."""
    hr = (ranks < K).astype(float)
    ndcg = np.where(ranks < K, 1 / np.log2(ranks + 2), 0.0)
    idx = np.random.default_rng(seed).integers(0, len(ranks), (1000, len(ranks)))
    out = {}
    for name, v in (("hr10", hr), ("ndcg10", ndcg)):
        boot = v[idx].mean(1)
        out[name] = {"mean": float(v.mean()), "low": float(np.percentile(boot, 2.5)),
                     "high": float(np.percentile(boot, 97.5))}
    return out


def _z(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean()) / (scores.std() + 1e-9)


def best_mix(parts: dict[str, list[np.ndarray]], n: int) -> tuple[np.ndarray, dict]:
    """Ranks under the best weighted sum of z-scored methods; weights chosen on the other half of the
    customers (even / odd), so no customer's weights were chosen on that customer."""
    names = list(parts)
    grid = [dict(zip(names, w)) for w in np.array(np.meshgrid(*[MIX_GRID] * len(names))).T.reshape(-1, len(names))
            if any(w)]

    def ranks(weights: dict, rows: range) -> np.ndarray:
        return np.array([rank_of_held(sum(weights[m] * _z(parts[m][i]) for m in names)) for i in rows])

    def ndcg(r: np.ndarray) -> float:
        return float(np.where(r < K, 1 / np.log2(r + 2), 0).mean())

    out, chosen = np.zeros(n), {}
    for half in (0, 1):
        fit, apply = range(1 - half, n, 2), range(half, n, 2)
        best = max(grid, key=lambda w: ndcg(ranks(w, fit)))
        out[list(apply)] = ranks(best, apply)
        chosen[f"half{half}"] = {k: float(v) for k, v in best.items()}
    return out, chosen


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="../shared/datasets/hm-interactions")
    ap.add_argument("--model", type=Path, required=True, help="the Myntra benchmark's model/ folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="feature cache (default: OUT/features-cache)")
    return ap.parse_args(argv)


def method_scores(cases: list[dict], bought: dict, hm: dict, tags: dict, vectors: dict, out: Path) -> dict:
    """Each method's candidate scores, per case."""
    held = {c["customer"]: c["held"] for c in cases}
    popularity = Counter(a for cust, items in bought.items() for a in items if a != held.get(cust))
    rng = np.random.default_rng(0)
    dim = len(next(iter(vectors.values())))

    def text(c):
        hist = np.mean([vectors.get(a, np.zeros(dim)) for a in c["history"]], axis=0)
        return np.array([float(vectors.get(a, np.zeros(dim)) @ hist) for a in c["candidates"]])

    return {"random": [rng.random(len(c["candidates"])) for c in cases],
            "popularity": [np.array([popularity[a] for a in c["candidates"]], float) for c in cases],
            "model_tags": profile_scores(cases, bought, tags, out, "model-tags"),
            "hm_attributes": profile_scores(cases, bought, hm, out, "hm-attributes"),
            "text_similarity": [text(c) for c in cases]}


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    catalog = import_articles(a.data, a.out)
    hm = {p.id: p.tags for p in read_catalog(catalog).products}
    tags, vectors = model_tags(a.model, catalog, a.cache or a.out / "features-cache", a.out)
    bought = purchases(a.data)
    cases = leave_one_out(bought, sorted(hm))
    scores = method_scores(cases, bought, hm, tags, vectors, a.out)
    ranks = {m: np.array([rank_of_held(s) for s in v]) for m, v in scores.items()}
    ranks["best_mix"], weights = best_mix({m: scores[m] for m in ("model_tags", "text_similarity", "popularity")},
                                          len(cases))
    found = {m: metrics(r) for m, r in ranks.items()}
    results = {"customers": len(cases), "candidates": CANDIDATES + 1,
               "ndcg10": {m: v["ndcg10"]["mean"] for m, v in found.items()},
               "hr10": {m: v["hr10"]["mean"] for m, v in found.items()},
               "intervals95": found, "mix_weights": weights,
               "model_tags_per_article": float(np.mean([len(t) for t in tags.values()]))}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (a.out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, a.out / "personalization.png")
    print(markdown(results))
    return results


def markdown(r: dict) -> str:
    lines = [f"{r['customers']} customers with >= 3 purchases; the held-out article among {r['candidates']} "
             "candidates; 95% bootstrap intervals over customers.", ""]

    def interval(v: dict) -> str:
        return f"{v['mean']:.4f} ({v['low']:.4f} .. {v['high']:.4f})"
    lines.append(markdown_table([{"method": m, "NDCG@10": interval(v["ndcg10"]), "HR@10": interval(v["hr10"])}
                                 for m, v in r["intervals95"].items()]))
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["intervals95"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for j, metric in enumerate(("ndcg10", "hr10")):
        v = [r["intervals95"][m][metric] for m in names]
        x = np.arange(len(names)) + (j - 0.5) * 0.38
        ax.bar(x, [e["mean"] for e in v], 0.38, label=metric.upper().replace("10", "@10"),
               yerr=[[e["mean"] - e["low"] for e in v], [e["high"] - e["mean"] for e in v]], capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set(title="Held-out H&M purchase among 100 candidates")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
