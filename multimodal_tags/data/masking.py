"""Texts made silent about attributes: label words removed from a product's title and description.

Real catalogs often do not state what the tags say ("Jade HW Skinny Denim TRS" names no colour), so
a tagger must be measured, and trained, on texts that do not give the answer away. The rule:

- A *word list* is built from label names: every word (letters and digits) of every name, lower-cased,
  each in its singular and plural forms (`word_forms`: +s, +es, and the word less a final s / es),
  leaving out a few function words (`STOP_WORDS`: "and", "of", ...).
- Masking removes every whole-word occurrence of those words from the title and the description,
  case-insensitive ("Navy" goes from "Navy-Blue Tshirt", "navy" stays in "navyblue"), then
  collapses the white space left behind.

The word lists the masked-text benchmark (experiments/implicit_benchmark.py) and training use:
`colour_words` (every value of the `colour:` key in the data), `category_words` (every category name),
`GENDER_WORDS`, and `tag_value_words` (the values of a product's own tags).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from .schema import Product
from .vocab import tag_key

STOP_WORDS = frozenset({"a", "an", "and", "the", "of", "for", "with", "in", "on", "to", "or", "by", "at", "not"})
GENDER_WORDS = frozenset({"men", "man", "mens", "women", "woman", "womens", "boy", "boys", "girl", "girls",
                          "unisex", "male", "female", "ladies", "lady", "gents", "kid", "kids"})
_WORD = re.compile(r"[^\W_]+")


def word_forms(word: str) -> set[str]:
    """A lower-cased word with its plural and singular forms (dress: dresses; shoes: shoe)."""
    w = word.lower()
    forms = {w, w + "s", w + "es"}
    if len(w) > 3 and w.endswith("es"):
        forms.add(w[:-2])
    if len(w) > 2 and w.endswith("s"):
        forms.add(w[:-1])
    return forms


def name_words(names: Iterable[str]) -> set[str]:
    """Every word of every name, in all its `word_forms`, function words left out."""
    out: set[str] = set()
    for name in names:
        for w in _WORD.findall(name or ""):
            if w.lower() not in STOP_WORDS:
                out |= word_forms(w)
    return out


def tag_value(tag: str) -> str:
    """The value of a `key:value` tag (the whole tag when it has no key)."""
    return tag.split(":", 1)[1] if ":" in tag else tag


def colour_words(tag_lists: Iterable[Iterable[str]], key: str = "colour") -> set[str]:
    """The words of every value of the colour key in the data (`colour:navy blue` -> navy, blue)."""
    return name_words({tag_value(t) for tags in tag_lists for t in tags if tag_key(t) == key})


def category_words(categories: Iterable[str | None]) -> set[str]:
    """The words of every category name, singular and plural."""
    return name_words(c for c in categories if c)


def tag_value_words(tags: Iterable[str]) -> set[str]:
    """The words of the values of these tags (`sleeve length:short sleeves` -> short, sleeves, sleeve)."""
    return name_words(tag_value(t) for t in tags)


class WordMask:
    """Removes a fixed set of words, whole-word and case-insensitive; `mask("")` is ""."""

    def __init__(self, words: Iterable[str]):
        self.words = frozenset(w.lower() for w in words if w)
        longest_first = sorted(self.words, key=lambda w: (-len(w), w))
        self._pattern = (re.compile(r"(?<![^\W_])(?:" + "|".join(map(re.escape, longest_first)) + r")(?![^\W_])",
                                    re.IGNORECASE) if longest_first else None)

    def __call__(self, text: str) -> str:
        if not text or self._pattern is None:
            return text or ""
        return " ".join(self._pattern.sub(" ", text).split())

    def product(self, p: Product) -> Product:
        """A copy of `p` with its title and description masked (its id, photo and labels unchanged)."""
        return dataclasses.replace(p, title=self(p.title), description=self(p.description))


def mask_products(products: Iterable[Product], base_words: Iterable[str] = (),
                  own_tags: bool = False, own_category: bool = False) -> list[Product]:
    """Each product with `base_words` removed, plus (`own_tags`) the words of its own tag values and
    (`own_category`) of its own category name."""
    base = frozenset(base_words)
    shared = WordMask(base)
    out = []
    for p in products:
        extra = (tag_value_words(p.tags) if own_tags else set()) | (name_words([p.category or ""]) if own_category else set())
        out.append((WordMask(base | extra) if extra else shared).product(p))
    return out


CATEGORY_GROUP = "\x00category"  # label_word_view's group of the category name (tag keys are the others)


def key_vocabularies(products: Iterable[Product]) -> dict[str, WordMask]:
    """{group: a mask of every word of every name the group has in `products`}: the category names
    (CATEGORY_GROUP) and, per tag key, all of its values: what `label_word_view` removes to make a text
    silent about a key, not just about the product's own value of it."""
    names: dict[str, set[str]] = {CATEGORY_GROUP: set()}
    for p in products:
        if p.category:
            names[CATEGORY_GROUP].add(p.category)
        for t in p.tags:
            names.setdefault(tag_key(t), set()).add(tag_value(t))
    return {group: WordMask(name_words(values)) for group, values in names.items()}


def label_word_view(p: Product, seed: int, drop: float = 0.5,
                    vocabularies: dict[str, WordMask] | None = None) -> Product:
    """A training view of `p` whose text is silent about some of its own labels: its category and each of
    its tag keys are chosen with probability `drop` (seeded, so a view is the same on every run), and the
    words of a chosen one are removed: the product's own value's words, or with `vocabularies`
    (key_vocabularies) every word of every value of it, so that "white buttons" does not stay behind in
    a navy shirt's text made silent about colour. Teaches a model to find what the words no longer say
    in the photo, and to stop trusting word evidence that is absent."""
    import random

    rng = random.Random(seed)
    groups: dict[str, list[str]] = {CATEGORY_GROUP: [p.category or ""]}
    for t in p.tags:
        groups.setdefault(tag_key(t), []).append(tag_value(t))
    chosen = [(group, names) for group, names in sorted(groups.items()) if rng.random() < drop]
    if vocabularies is None:
        return WordMask(set().union(*(name_words(names) for _, names in chosen))).product(p)
    for group, names in chosen:
        p = (vocabularies.get(group) or WordMask(name_words(names))).product(p)
    return p
