"""Predictions -> output rows (what predictions JSONL, the tag store and the service carry), and the
metrics of rows against the products' labels."""
from __future__ import annotations

from collections.abc import Sequence

from ..data.schema import Product
from ..metrics import tagging_report, top_k_accuracy

TAG_SOURCES = ("decoder", "head", "both")
# "auto": the decoder's generated tags where the model has a decoder (the benchmark's choice), else the head's
DEFAULT_TAG_SOURCE = "auto"


def resolve_tag_source(source: str, has_decoder: bool, model: str = "this model") -> str:
    """The tag source to use: `source`, with "auto" resolved; a decoder source needs a decoder."""
    if source == "auto":
        return "decoder" if has_decoder else "head"
    if source not in TAG_SOURCES:
        raise ValueError(f"tag source {source!r} is not one of auto, {', '.join(TAG_SOURCES)}")
    if source != "head" and not has_decoder:
        raise ValueError(f"{model} has no tag decoder: use --tag-source head")
    return source


def chosen_tags(pred: dict, source: str) -> dict[str, float]:
    """Tags of one prediction from the tag head, the decoder, or both (union, max score)."""
    if source not in TAG_SOURCES:
        raise ValueError(f"tag source {source!r} is not one of {', '.join(TAG_SOURCES)}")
    head, gen = pred.get("head_tags", {}), pred.get("generated_tags", {})
    if source == "head":
        return dict(head)
    if source == "decoder":
        return dict(gen)
    return {t: max(head.get(t, 0.0), gen.get(t, 0.0)) for t in {**head, **gen}}


def required_fill(pred: dict, tags: dict[str, float]) -> dict[str, float]:
    """The tags that answer the keys this product must answer (`pred["required"]`, from the model) and
    `tags` leaves unanswered: each such key's most probable value, with its score."""
    answered = {t.split(":", 1)[0] for t in tags}
    return {tag: score for key, (tag, score) in pred.get("required", {}).items() if key not in answered}


def prediction_row(product: Product, pred: dict, source: str, model_id: str = "") -> dict:
    """One output row: what `../shared/bench/myntra_eval.py` reads (id, category, tags) plus scores,
    where each tag came from ("head", "decoder", "both", or "filled": a required key the chosen tags left
    unanswered), the modality weights, the head's tags just under their thresholds (`suggested`) and the
    thresholds of the head's tags (what a review queue orders by), the model id and the content hash."""
    tags = chosen_tags(pred, source)
    filled = required_fill(pred, tags)
    tags |= filled
    head, gen = pred.get("head_tags", {}), pred.get("generated_tags", {})
    return {"id": product.id, "category": pred["category"], "category_score": round(pred["category_score"], 5),
            "tags": sorted(tags, key=lambda t: -tags[t]),
            "tag_scores": {t: round(s, 5) for t, s in sorted(tags.items(), key=lambda kv: -kv[1])},
            "tag_sources": {t: "filled" if t in filled else "both" if (t in head and t in gen)
                            else "head" if t in head else "decoder" for t in tags},
            "category_top": pred.get("category_top"), "modality_weights": pred.get("modality_weights"),
            "suggested": {t: round(s, 5) for t, s in pred.get("suggested", {}).items() if t not in tags},
            "tag_thresholds": {t: round(v, 5) for t, v in pred.get("thresholds", {}).items()},
            "model_id": model_id, "content_hash": product.content_hash}


def prediction_rows(products: Sequence[Product], preds: Sequence[dict], source: str,
                    model_id: str = "") -> list[dict]:
    """`prediction_row` for each product and its prediction."""
    return [prediction_row(p, q, source, model_id) for p, q in zip(products, preds)]


def score_rows(products: Sequence[Product], rows: Sequence[dict]) -> dict:
    """Metrics of prediction rows against the products' labels (accuracy over products that have a
    category; top-5 accuracy when the rows carry the category ranking)."""
    report = tagging_report([p.category for p in products], [r["category"] for r in rows],
                            [set(p.tags) for p in products], [set(r["tags"]) for r in rows])
    if rows and rows[0].get("category_top"):
        ranked = [[c for c, _ in r["category_top"]] for r in rows]
        report["category_top5_accuracy"] = top_k_accuracy([p.category for p in products], ranked, 5)
    return report
