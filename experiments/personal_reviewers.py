"""Two reviewers with different habits judge the same stream: does each see better tags once their own
habits are learned?

    python experiments/personal_reviewers.py --model MODEL_DIR --out OUT [--cache CACHE]

On fashion-myntra (the benchmark's catalog beside MODEL_DIR), reviewer A rejects every `season:` and
`usage:` tag and reviewer B accepts every one (right or wrong); both judge all other tags against the
true labels (accept right, reject wrong, add missed). Both judge the same first --judged validation
products; their events go to one feedback store under their own user ids. The acceptance rate of each
reviewer is then measured on the test products, judged the same way: before (the model's shared tags)
and after personalisation (personal/ranking.py: the tags each one sees, from their own judgements).
Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from multimodal_tags.features import RunConfig
from multimodal_tags.inference.batch_tagger import BatchTagger
from multimodal_tags.models.tag_tokenizer import tag_key
from multimodal_tags.feedback.events import FeedbackEvent
from multimodal_tags.personal.ranking import key_rates, personal_view

from experiments.common import benchmark_catalog, default_cache, markdown_table
from experiments.feedback_simulation import Scored, fresh_store, split_ids

HABIT_KEYS = ("season", "usage")
REVIEWERS = {"A": "reject", "B": "accept"}  # what each does with every season: and usage: tag


def judge(product, shown: list[str], habit: str) -> list[tuple[str, str]]:
    """(tag, action) of a reviewer with a habit for HABIT_KEYS and the truth for everything else."""
    true = set(product.tags)
    out = [(t, habit if tag_key(t) in HABIT_KEYS else ("accept" if t in true else "reject")) for t in shown]
    out += [(t, "add") for t in sorted(true - set(shown)) if tag_key(t) not in HABIT_KEYS]
    return out


def acceptance(products, shown: list[list[str]], habit: str) -> float:
    judged = [a for p, s in zip(products, shown) for _, a in judge(p, s, habit) if a != "add"]
    return sum(a == "accept" for a in judged) / max(len(judged), 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--judged", type=int, default=500, help="validation products both reviewers judge")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    catalog = benchmark_catalog(a.model, a.data, a.out)
    cache = a.cache or default_cache(a.model, catalog)
    split = split_ids(catalog)
    tagger = BatchTagger(a.model, cache, RunConfig(cache_dir=cache, progress=False, log=lambda s: None))
    scored = Scored.splits(tagger, split, a.out)
    val, test = split["val"][:a.judged], split["test"]
    fb = fresh_store(a.out / "store-reviewers.db")
    fb.tags.write(scored["val"].rows[:a.judged], {}, val)
    for user, habit in REVIEWERS.items():
        events = [FeedbackEvent(event_id=f"{user}-{i}-{j}", user=user, product=p.id, tag=t, action=act)
                  for i, (p, r) in enumerate(zip(val, scored["val"].rows)) for j, (t, act) in enumerate(judge(p, r["tags"], habit))]
        fb.add(events)
    vocab = tagger.model.tags
    heads = [{t: float(s.head[k]) for k, t in enumerate(vocab)} for s in scored["test"].scores]
    shared = [r["tags"] for r in scored["test"].rows]
    results = {"judged": a.judged, "test_products": len(test), "reviewers": {}}
    everyone = key_rates(fb.key_counts(), fb.key_counts())
    for user, habit in REVIEWERS.items():
        rates = key_rates(fb.key_counts(user), fb.key_counts())
        mine = [list(personal_view(r["tag_scores"], rates, everyone, h)) for r, h in zip(scored["test"].rows, heads)]
        results["reviewers"][user] = {"habit": f"{habit}s every {' and '.join(HABIT_KEYS)} tag",
                                      "acceptance_before": acceptance(test, shared, habit),
                                      "acceptance_after": acceptance(test, mine, habit),
                                      "rates": {k: round(rates[k], 3) for k in HABIT_KEYS if k in rates}}
    fb.close()
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    md = markdown_table([{"reviewer": u, "habit": r["habit"], "acceptance before": r["acceptance_before"],
                          "after personalisation": r["acceptance_after"]} for u, r in results["reviewers"].items()])
    (a.out / "results.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    return results


if __name__ == "__main__":
    main()
