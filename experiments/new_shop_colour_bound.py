"""How much colour accuracy a shop whose texts never name the colour allows, whatever is reviewed.

    python experiments/new_shop_colour_bound.py --data ../shared/datasets/hm-interactions --out OUT

experiments/new_shop.py tags H&M's articles from their texts alone (no photos). Its colour scores are
bounded by what the texts say of colour, and this script measures that bound on the same test half
(the same hash split, the same colour map, experiments/hm_map.py), with no model at all:
- `text_names_colour_share`: the share of articles whose name or description holds a word of their own
  H&M colour group (whole words, case-insensitive). What a text model can read.
- `global_mode_acc`: on the test half, the accuracy of answering every product with the pool's most
  common colour (what a prior learned from reviews answers when the text is silent).
- `category_mode_acc`: the same with one most common colour per product type, learned from N random
  pool products whose true types are known (a model's predicted types can only do worse), shrunk
  towards the pool's mode by a pseudo-count; the best pseudo-count on the test half (so an upper
  bound), mean and best over SEEDS samples.
- `category_mode_in_sample_acc`: the most common colour per type of the test half itself, scored on
  it: no prior conditioned on the type can do better.
Writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from experiments.common import markdown_table, run_facts
from experiments.hm_map import articles, half, truth

SIZES = (100, 300, 1000)
SEEDS = 20
PSEUDO_COUNTS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


def names_colour(article: dict) -> bool:
    """Whether the article's name or description holds a word of its own colour group."""
    text = f"{article['prod_name']} {article['detail_desc']}".lower()
    words = re.findall(r"[a-z]+", article["colour_group_name"].lower())
    return any(re.search(rf"\b{w}\b", text) for w in words)


def labelled_halves(rows: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(product type, mapped colour) of the articles with a mapped colour, in new_shop.py's pool and test."""
    halves = {"pool": [], "test": []}
    for r in rows:
        _, values = truth(r)
        if "colour" in values:
            halves[half(r)].append((r["product_type_name"], values["colour"]))
    return halves["pool"], halves["test"]


def accuracy(answer, test: list[tuple]) -> float:
    return sum(answer(kind) == colour for kind, colour in test) / len(test)


def category_mode(sample: list[tuple], pseudo_count: float):
    """Per type, the colour with the most (count in the type + pseudo_count x its share of the sample)."""
    overall, by_kind = Counter(c for _, c in sample), defaultdict(Counter)
    for kind, colour in sample:
        by_kind[kind][colour] += 1
    return lambda kind: max(overall, key=lambda v: by_kind[kind][v] + pseudo_count * overall[v] / len(sample))


def table(r: dict) -> str:
    """The bound beside what a review of N products can learn of it."""
    cells = lambda n: f"{r['category_mode_acc'][n]['mean']:.4f} (best {r['category_mode_acc'][n]['best']:.4f})"
    rows = [{"answer on the test half": f"the pool's most common colour ({r['global_mode']}) for every product",
             **{f"N = {n}": f"{r['global_mode_acc']:.4f}" for n in r["category_mode_acc"]}},
            {"answer on the test half": "the most common colour of the product's true type, from N random "
                                        "pool products",
             **{f"N = {n}": cells(n) for n in r["category_mode_acc"]}}]
    return (markdown_table(rows) + f"\n\nThe texts name their own colour for {r['text_names_colour_share']:.1%} "
            f"of the articles; the most common colour of each type, counted on the test half itself, is right "
            f"for {r['category_mode_in_sample_acc']:.4f}.")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the hm-interactions folder")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    rows = articles(a.data)
    pool, test = labelled_halves(rows)
    mode = Counter(c for _, c in pool).most_common(1)[0][0]
    by_size = {}
    for n in SIZES:
        accs = [max(accuracy(category_mode(random.Random(seed).sample(pool, n), k), test) for k in PSEUDO_COUNTS)
                for seed in range(SEEDS)]
        by_size[str(n)] = {"mean": round(sum(accs) / len(accs), 4), "best": round(max(accs), 4)}
    in_sample = category_mode(test, 0.0)
    results = {"articles": len(rows), "pool": len(pool), "test": len(test),
               "text_names_colour_share": round(sum(map(names_colour, rows)) / len(rows), 4),
               "global_mode": mode, "global_mode_acc": round(accuracy(lambda kind: mode, test), 4),
               "category_mode_acc": by_size,
               "category_mode_in_sample_acc": round(accuracy(in_sample, test), 4), "run": run_facts()}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
