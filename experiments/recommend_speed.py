"""Recommendations at catalog scale: the service's TagIndex against a scan of every stored product.

    python experiments/recommend_speed.py --out runs/recommend-speed [--products 44000]

Fills a tag store with synthetic products (tags drawn from a 445-tag vocabulary, 5-8 per product, as
Myntra's), gives users profiles from purchases, and times both ways of answering "the user's top 10":
the scan (what `recommend` did before the index: read every product, score, sort) and the index
(`personal/tag_index.TagIndex`, as the service keeps it). They must return the same products. Writes
OUT/results.json: products, scan_ms_p50, index_ms_p50, index_ms_p99, build_s, speedup, same_results.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from multimodal_tags.personal.profiles import Profiles, match_score
from multimodal_tags.personal.tag_index import TagIndex
from multimodal_tags.tagging.tag_store import TagStore

from experiments.common import markdown_table, run_facts


def fill(store: TagStore, n: int, rng: random.Random) -> list[str]:
    vocab = [f"key{i % 40}:value{i}" for i in range(445)]
    weights = [1.0 / (1 + i) ** 0.7 for i in range(len(vocab))]  # a few frequent tags, a long tail
    ids = [f"p{i:06d}" for i in range(n)]
    with store.transaction():
        for pid in ids:
            tags = set(rng.choices(vocab, weights, k=rng.randint(5, 8)))
            store.db.execute("INSERT INTO products (id, content_hash, model_id, category, category_score, tags, "
                             "updated_at) VALUES (?, 'h', 'm', 'c', 1.0, ?, ?)",
                             (pid, json.dumps({t: {"score": 1.0} for t in tags}), time.time()))
    return ids


def scan(store: TagStore, affinity: dict[str, float], k: int) -> list[dict]:
    """The way before the index: every live product read, scored and sorted."""
    rows = store.db.execute("SELECT id, tags FROM products WHERE removed_at IS NULL").fetchall()
    tags = {pid: list(json.loads(t)) for pid, t in rows}
    df = Counter(t for ts in tags.values() for t in ts)
    idf = {t: math.log((len(tags) + 1) / c) for t, c in df.items()}
    scored = sorted(((match_score(ts, affinity, idf), pid) for pid, ts in tags.items()), key=lambda x: (-x[0], x[1]))
    return [{"id": pid, "score": round(score, 5)} for score, pid in scored[:k]]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--products", type=int, default=44_000)
    ap.add_argument("--users", type=int, default=50)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    path, rng = a.out / "store.db", random.Random(0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with TagStore(path) as store:
        ids = fill(store, a.products, rng)
        profiles = Profiles(store)
        for u in range(a.users):
            for j, pid in enumerate(rng.sample(ids, 5)):
                profiles.add(f"e{u}-{j}", f"user{u}", "purchase", json.loads(store.db.execute(
                    "SELECT tags FROM products WHERE id = ?", (pid,)).fetchone()[0]))
        t0 = time.perf_counter()
        index = TagIndex.build(store)
        build_s = time.perf_counter() - t0
        scan_ms, index_ms, same = [], [], True
        for u in range(a.users):
            affinity = profiles.affinities(f"user{u}")
            t0 = time.perf_counter()
            by_index = index.top(affinity, 10)
            index_ms.append(1000 * (time.perf_counter() - t0))
            if u < 10:  # the scan is slow: ten users are enough to time it
                t0 = time.perf_counter()
                same &= scan(store, affinity, 10) == by_index
                scan_ms.append(1000 * (time.perf_counter() - t0))
    results = {"products": a.products, "users": a.users, "scan_ms_p50": statistics.median(scan_ms),
               "index_ms_p50": statistics.median(index_ms),
               "index_ms_p99": sorted(index_ms)[max(0, math.ceil(0.99 * len(index_ms)) - 1)],
               "build_s": build_s, "speedup": statistics.median(scan_ms) / statistics.median(index_ms),
               "same_results": same, "run": run_facts()}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(markdown_table([{k: v for k, v in results.items() if k != "run"}], {"build_s": 2, "speedup": 1}))
    return results


if __name__ == "__main__":
    main()
