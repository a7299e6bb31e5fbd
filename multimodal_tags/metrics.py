"""Classification and multi-label tag metrics, defined as the Myntra benchmark defines them.

micro P/R/F1 pool true positives over all products; macro F1 averages per-tag F1 over tags that
occur in the gold labels; per-key F1 groups `key:value` tags by key.
"""
from __future__ import annotations

from collections.abc import Sequence


def accuracy(gold: Sequence, pred: Sequence) -> float:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    return sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else 0.0


def prf(gold_sets: Sequence[set], pred_sets: Sequence[set]) -> tuple[float, float, float]:
    """Micro precision, recall, F1 of predicted tag sets against gold tag sets."""
    tp = sum(len(g & p) for g, p in zip(gold_sets, pred_sets))
    npred = sum(len(p) for p in pred_sets)
    ngold = sum(len(g) for g in gold_sets)
    p = tp / npred if npred else 0.0
    r = tp / ngold if ngold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def macro_f1(gold_sets: Sequence[set], pred_sets: Sequence[set]) -> float:
    """Mean per-tag F1 over tags present in the gold labels."""
    tags = sorted(set().union(*gold_sets)) if gold_sets else []
    if not tags:
        return 0.0
    return sum(prf([g & {t} for g in gold_sets], [p & {t} for p in pred_sets])[2] for t in tags) / len(tags)


def f1_by_key(gold_sets: Sequence[set], pred_sets: Sequence[set]) -> dict[str, float]:
    """Micro F1 per attribute key (the part of a tag before ':')."""
    keys = {t.split(":", 1)[0] for s in (*gold_sets, *pred_sets) for t in s}
    out = {}
    for k in sorted(keys):
        pick = lambda s: {t for t in s if t.split(":", 1)[0] == k}  # noqa: E731
        out[k] = prf([pick(g) for g in gold_sets], [pick(p) for p in pred_sets])[2]
    return out


def top_k_accuracy(gold: Sequence, ranked: Sequence[Sequence], k: int) -> float:
    """Share of products whose gold label is among the first k ranked predictions."""
    return sum(g in list(r)[:k] for g, r in zip(gold, ranked)) / len(gold) if gold else 0.0


def tagging_report(gold_categories: Sequence, pred_categories: Sequence, gold_tags: Sequence[set],
                   pred_tags: Sequence[set]) -> dict[str, float | dict]:
    """All headline metrics in one dict (the shape `metrics.json` uses)."""
    p, r, f = prf(gold_tags, pred_tags)
    return {"products": len(gold_tags), "category_accuracy": accuracy(gold_categories, pred_categories),
            "tags_micro_precision": p, "tags_micro_recall": r, "tags_micro_f1": f,
            "tags_macro_f1": macro_f1(gold_tags, pred_tags), "f1_by_key": f1_by_key(gold_tags, pred_tags)}


def paired_f1_difference(gold_sets: Sequence[set], a_sets: Sequence[set], b_sets: Sequence[set],
                         n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Micro-F1 of b minus that of a on the same products, with a paired bootstrap over products:
    {"diff", "low", "high"} (the 5th and 95th percentiles of the resampled difference)."""
    import numpy as np

    def parts(pred_sets):  # per product: 2 x true positives, and predicted + gold tags
        return (np.array([2 * len(g & p) for g, p in zip(gold_sets, pred_sets)], float),
                np.array([len(g) + len(p) for g, p in zip(gold_sets, pred_sets)], float))

    (na, da), (nb, db) = parts(a_sets), parts(b_sets)
    if not len(na):
        return {"diff": 0.0, "low": 0.0, "high": 0.0}
    idx = np.random.default_rng(seed).integers(0, len(na), (n_boot, len(na)))
    boot = nb[idx].sum(1) / np.maximum(db[idx].sum(1), 1) - na[idx].sum(1) / np.maximum(da[idx].sum(1), 1)
    diff = nb.sum() / max(db.sum(), 1) - na.sum() / max(da.sum(), 1)
    return {"diff": float(diff), "low": float(np.percentile(boot, 5)), "high": float(np.percentile(boot, 95))}


def retrieval_recall(similarity, ks: Sequence[int] = (1, 10)) -> dict[int, float]:
    """Recall@k of a square similarity matrix [queries, items] whose right item for query i is item i."""
    import numpy as np

    sim = np.asarray(similarity)
    right = sim[np.arange(len(sim)), np.arange(len(sim))][:, None]
    rank = (sim > right).sum(1)  # items scored above the right one (ties count in its favour)
    return {k: float((rank < k).mean()) for k in ks}
