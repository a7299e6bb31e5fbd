"""The review queue: the stored products in the order a review would teach the model most.

Categories (as predicted) take turns in proportion to their sizes (`spread`), so one category does not
fill the queue and the reviews look like the shop; products nobody has judged come before those already
reviewed. Within a category, two orders (`ORDERS`):
- "shop" (the default): a fixed pseudo-random order (a hash of the id), so that any first N reviews are
  a stratified sample of the shop. What a new shop's model learns first is the shop's own priors (its
  colours, its categories) and its typical products, and a sample of the uncertain ones teaches them
  wrongly: on H&M (experiments/new_shop.py, docs/results.md) this order beat random picks on category
  at 100, 300 and 1,000 reviews, and the uncertainty order lost to random at 100 and 1,000.
- "uncertain": the most uncertain product first. A product's priority is how close its decisions are
  to going the other way (`closeness`, 0..1): the tag nearest its threshold (tags the row shows and the
  head's tags just under their thresholds, both with the threshold the model used) or the category's
  margin over its runner-up, whichever is closer. For a model that already knows the shop: its reviews
  go where a decision could flip.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ..models.tag_tokenizer import CATEGORY_KEY, tag_key
from ..tagging.tag_store import TagStore
from .feedback_store import FeedbackStore

# How the queue shares itself between categories (see `spread`): in proportion to their sizes, so a
# review sample looks like the shop (what a reviewer fixes is what most products need fixed) while no
# category takes more than its share and the most uncertain product of each category comes first.
SHARE_POWER = 1.0
ORDERS = ("shop", "uncertain")  # within a category: a stratified sample of the shop, or most uncertain first


@dataclass
class QueueFilter:
    """Which products the queue holds: a tag key, a category, a range of tag scores, never reviewed."""

    key: str | None = None
    category: str | None = None
    min_score: float = 0.0
    max_score: float = 1.0
    unreviewed: bool = False

    def keeps(self, card: dict) -> bool:
        """Whether `card` passes: its category, and some tag of the key (if given) scored within the range."""
        if self.category and card["category"] != self.category:
            return False
        if self.unreviewed and card["reviewed"]:
            return False
        return any((not self.key or tag_key(t["tag"]) == self.key) and self.min_score <= t["score"] <= self.max_score
                   for t in card["tags"])


def closeness(score: float, threshold: float) -> float:
    """1 at the threshold, 0 at the far end (0 or 1) of the side the score is on."""
    span = threshold if score < threshold else 1.0 - threshold
    return max(0.0, 1.0 - abs(score - threshold) / max(span, 1e-6))


def card(row: dict, judged: dict[str, bool], product: dict | None) -> dict:
    """A product's review card: text, category with its runners-up, tags shown and suggested (each with
    its score, source, threshold and standing judgement), and its priority."""
    review = row.get("review") or {}
    thresholds = review.get("tag_thresholds") or {}
    tags = [{"tag": t, "score": v["score"], "source": v["source"], "threshold": thresholds.get(t),
             "suggested": False, "judged": judged.get(t)} for t, v in row["tags"].items()]
    tags += [{"tag": t, "score": s, "source": "head", "threshold": thresholds.get(t), "suggested": True,
              "judged": judged.get(t)} for t, s in (review.get("suggested") or {}).items() if t not in row["tags"]]
    tags += [{"tag": t, "score": 1.0, "source": "feedback", "threshold": None, "suggested": False, "judged": True}
             for t, right in judged.items() if right and t not in {x["tag"] for x in tags} and tag_key(t) != CATEGORY_KEY]
    near = [closeness(t["score"], t["threshold"]) for t in tags if t["threshold"] is not None]
    top = review.get("category_top") or []
    if len(top) >= 2:
        near.append(1.0 - (top[0][1] - top[1][1]))
    product = product or {}
    return {"id": row["id"], "title": product.get("title", ""), "description": product.get("description", ""),
            "has_photo": bool(product.get("image")), "category": row["category"],
            "category_score": row["category_score"], "category_top": top, "model_id": row["model_id"],
            "tags": tags, "category_judged": judged.get(f"{CATEGORY_KEY}:{row['category']}"),
            "priority": round(max(near, default=0.0), 5), "reviewed": bool(judged)}


def _within(order: str):
    """The sort key of cards within a category for `order` (ORDERS), products never reviewed first."""
    if order == "shop":
        return lambda c: (c["reviewed"], hashlib.sha1(c["id"].encode()).hexdigest(), c["id"])
    if order == "uncertain":
        return lambda c: (c["reviewed"], -c["priority"], c["id"])
    raise ValueError(f"order: {order!r} is not one of {', '.join(ORDERS)}")


def spread(cards: list[dict], share_power: float = SHARE_POWER, order: str = "shop") -> list[dict]:
    """Cards with the categories taking turns: a category of n cards gets turns at a rate of
    n ** share_power (1: its share of the products, as a stratified sample; 0: one card each in turn),
    in `order` within it; ties go to the category first met in that order."""
    by_category: dict[str, list[dict]] = defaultdict(list)
    for c in sorted(cards, key=_within(order)):
        by_category[c["category"]].append(c)
    turns = [((rank + 0.5) / len(v) ** share_power, order, rank, card)
             for order, v in enumerate(by_category.values()) for rank, card in enumerate(v)]
    out = [card for *_, card in sorted(turns, key=lambda t: t[:3])]
    return sorted(out, key=lambda c: c["reviewed"])  # stable: the turn order holds within each part


def all_cards(store: TagStore, feedback: FeedbackStore) -> list[dict]:
    """Every live product's card, unordered (what `queue` filters and orders)."""
    rows = list(store.live_rows())
    judged = feedback.judgements()
    products = store.product_dicts(r["id"] for r in rows)
    return [card(r, judged.get(r["id"], {}), products.get(r["id"])) for r in rows]


def queue(cards: Iterable[dict], flt: QueueFilter | None = None, order: str = "shop") -> list[dict]:
    """The cards that pass `flt`, in queue order (`order`: see ORDERS)."""
    flt = flt or QueueFilter()
    return spread([c for c in cards if flt.keeps(c)], order=order)


def review_cards(store: TagStore, feedback: FeedbackStore, flt: QueueFilter | None = None,
                 order: str = "shop") -> list[dict]:
    """Every live product's card that passes `flt`, in queue order."""
    return queue(all_cards(store, feedback), flt, order)


def counters(cards: Iterable[dict], stats: dict) -> dict:
    """Reviewed and remaining products (of the filtered queue) and the acceptance rate so far (`stats`:
    FeedbackStore.stats)."""
    cards = list(cards)
    reviewed = sum(c["reviewed"] for c in cards)
    return {"reviewed": reviewed, "remaining": len(cards) - reviewed, "acceptance_rate": stats["acceptance_rate"],
            "judged": stats["judged"], "events": stats["events"]}


def key_rejections(cards: Iterable[dict], key: str) -> list[tuple[str, str]]:
    """(product, tag) for every shown, not yet rejected tag of `key` on the cards: what rejecting that key
    across the filtered queue judges."""
    return [(c["id"], t["tag"]) for c in cards for t in c["tags"]
            if tag_key(t["tag"]) == key and not t["suggested"] and t["judged"] is not False]
