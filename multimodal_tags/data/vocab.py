"""Tag normalisation and the tag vocabulary.

A tag is a lower-cased `key:value` string (`colour:navy blue`, `sleeve length:short sleeves`, `颜色:红色`).
Importers normalise it with NFKC, so full-width forms become half-width (`Ｓ码` and `S码` are one tag)
and CJK compatibility ideographs their unified form; traditional and simplified Chinese are left as
they are (a shop's own choice), and runs of white space become one space.
The vocabulary is the set of tags seen at least `min_count` times among training products;
rarer tags are too sparse to learn and are set aside (kept in `extra["rare_tags"]`).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

from .schema import Product

def tag_key(tag: str) -> str:
    """The key of a `key:value` tag (the whole tag when it has no key)."""
    return tag.split(":", 1)[0] if ":" in tag else tag


#: Values that mean "no value" in shop exports (the Myntra benchmark v1 list).
EMPTY_VALUES = {"", "na", "n/a", "other", "others", "none", "null"}


def canonical_text(text: str) -> str:
    """NFKC (full-width to half-width), white space collapsed to single spaces, stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def normalise_tag(key: str, value: str) -> str | None:
    """`key:value`, canonical (see `canonical_text`) and lower-cased, or None when the value is empty-like."""
    key, value = canonical_text(key or ""), canonical_text(value or "")
    if not key or value.lower() in EMPTY_VALUES:
        return None
    return f"{key}:{value}".lower()


def build_vocab(products: Iterable[Product], min_count: int = 1, split: str | None = "train") -> list[str]:
    """Sorted tags seen >= min_count times among products of `split` (all products when None
    or when no product has a split)."""
    products = list(products)
    pool = [p for p in products if split is None or p.split == split] or products
    counts = Counter(t for p in pool for t in set(p.tags))
    return sorted(t for t, c in counts.items() if c >= min_count)


def apply_vocab(products: Iterable[Product], vocab: Iterable[str]) -> None:
    """Keep only vocabulary tags in `product.tags`; the others move to extra['rare_tags']."""
    keep = set(vocab)
    for p in products:
        rare = [t for t in p.tags if t not in keep]
        if rare:
            p.extra["rare_tags"] = rare
        p.tags = sorted(t for t in p.tags if t in keep)
