"""Tokenizers for the tag decoder.

Closed vocabulary (`TagTokenizer`): each vocabulary tag is one token, so a product's tags are a short
sequence (exact, and easy to constrain). Open vocabulary (`TextTagTokenizer`): tags are written as text,
`key:value; key:value`, through a BPE tokenizer (a pretrained GPT-2's, or one trained on the training
tags with `tokenizers`), so tags never seen in training can be generated.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..data.vocab import tag_key  # re-exported: the layers above import it from here

SEPARATOR = "; "
#: Feedback on the tag `category:NAME` judges a product's category (the review page, feedback/adapt.py).
CATEGORY_KEY = "category"


def columns_by_key(tags: Sequence[str]) -> dict[str, list[int]]:
    """The columns of `tags` of each `key:value` key."""
    out: dict[str, list[int]] = {}
    for j, t in enumerate(tags):
        if ":" in t:
            out.setdefault(tag_key(t), []).append(j)
    return out


def single_valued_keys(tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """Keys that never carry two values on one product in the data (colour, gender, ...)."""
    seen, multi = set(), set()
    for tags in tag_lists:
        keys = Counter(tag_key(t) for t in tags if ":" in t)
        seen |= set(keys)
        multi |= {k for k, c in keys.items() if c > 1}
    return sorted(seen - multi)


def single_value_columns(tags: Sequence[str], single_valued: Iterable[str]) -> list[list[int]]:
    """The columns of `tags` of each single-valued key that has two values or more in them."""
    single = set(single_valued)
    return [cols for key, cols in columns_by_key(tags).items() if key in single and len(cols) > 1]


class TagTokenizer:
    """One token per tag, plus PAD, BOS and EOS.

    Tags of a product are written in a fixed order (most frequent key first, then the tag), so the
    decoder learns one canonical sequence per tag set.
    """

    PAD, BOS, EOS = 0, 1, 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")
    kind = "closed"

    def __init__(self, tags: Sequence[str], single_valued: Iterable[str] = (), key_order: Sequence[str] = ()):
        self.tags = list(tags)
        self.index = {t: i + len(self.SPECIALS) for i, t in enumerate(self.tags)}
        self.single_valued = set(single_valued)
        self.keys = list(dict.fromkeys([*key_order, *sorted({tag_key(t) for t in self.tags})]))
        rank = {k: i for i, k in enumerate(self.keys)}
        self._rank = {t: (rank[tag_key(t)], t) for t in self.tags}

    @classmethod
    def fit(cls, vocab: Sequence[str], train_tags: Iterable[Sequence[str]]) -> "TagTokenizer":
        train_tags = [list(t) for t in train_tags]
        key_counts = Counter(tag_key(t) for tags in train_tags for t in tags)
        return cls(vocab, single_valued_keys(train_tags), [k for k, _ in key_counts.most_common()])

    def __len__(self) -> int:
        return len(self.SPECIALS) + len(self.tags)

    def key_ids(self) -> list[int]:
        """For every token id, the index of its key in `self.keys` (-1 for specials)."""
        kidx = {k: i for i, k in enumerate(self.keys)}
        return [-1] * len(self.SPECIALS) + [kidx[tag_key(t)] for t in self.tags]

    def encode(self, tags: Iterable[str]) -> list[int]:
        """BOS, the known tags in canonical order, EOS (unknown tags are skipped)."""
        known = sorted((t for t in set(tags) if t in self.index), key=self._rank.__getitem__)
        return [self.BOS, *(self.index[t] for t in known), self.EOS]

    def decode(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            if i == self.EOS:
                break
            if i >= len(self.SPECIALS):
                out.append(self.tags[i - len(self.SPECIALS)])
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tags": self.tags, "single_valued": sorted(self.single_valued), "keys": self.keys}

    @classmethod
    def from_dict(cls, d: dict) -> "TagTokenizer":
        return cls(d["tags"], d["single_valued"], d["keys"])


class TextTagTokenizer:
    """Tags as text through a BPE tokenizer: `bos key:value; key:value eos`."""

    kind = "open"

    def __init__(self, tokenizer, single_valued: Iterable[str] = ()):
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise TypeError("TextTagTokenizer needs a fast tokenizer")
        self.tok = tokenizer
        for name, tok in (("pad_token", "<pad>"), ("bos_token", "<bos>"), ("eos_token", "<eos>")):
            if getattr(self.tok, name) is None:
                self.tok.add_special_tokens({name: tok})
        self.PAD, self.BOS, self.EOS = self.tok.pad_token_id, self.tok.bos_token_id, self.tok.eos_token_id
        self.single_valued = set(single_valued)

    @classmethod
    def train(cls, train_tags: Iterable[Sequence[str]], vocab_size: int = 2000) -> "TextTagTokenizer":
        """A BPE trained on the training products' tag strings: over characters where the tags are
        mostly Chinese (every merge starts from whole characters, so no generated token ends inside
        one), else byte-level (any text can be written)."""
        from transformers import PreTrainedTokenizerFast

        train_tags = [list(t) for t in train_tags]
        texts = [SEPARATOR.join(sorted(t)) for t in train_tags if t]
        tok = (_char_bpe if cjk_share(texts) >= 0.3 else _byte_bpe)(texts, vocab_size)
        tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                      unk_token="<unk>")
        return cls(tok, single_valued_keys(train_tags))

    @classmethod
    def pretrained(cls, name_or_path: str, train_tags: Iterable[Sequence[str]] = ()) -> "TextTagTokenizer":
        """A pretrained GPT-2 tokenizer (hub name or local folder)."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(name_or_path), single_valued_keys(list(train_tags)))

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, tags: Iterable[str]) -> list[int]:
        return [self.BOS, *self.tok.encode(SEPARATOR.join(sorted(set(tags))), add_special_tokens=False), self.EOS]

    def decode(self, ids: Iterable[int]) -> list[str]:
        ids = list(ids)
        if self.EOS in ids:
            ids = ids[:ids.index(self.EOS)]
        text = self.tok.decode([i for i in ids if i not in (self.PAD, self.BOS)])
        return list(dict.fromkeys(t.strip() for t in text.split(";") if t.strip()))

    def save(self, folder: Path) -> None:
        self.tok.save_pretrained(str(folder / "tag_tokenizer"))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "single_valued": sorted(self.single_valued)}

    @classmethod
    def load(cls, folder: Path, d: dict) -> "TextTagTokenizer":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(folder / "tag_tokenizer")), d["single_valued"])


def cjk_share(texts: Iterable[str]) -> float:
    """Share of CJK ideographs among the non-space characters."""
    chars = [c for t in texts for c in t if not c.isspace()]
    return sum("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in chars) / max(len(chars), 1)


_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _byte_bpe(texts: list[str], vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=_SPECIALS)
    return bpe._tokenizer


def _char_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=_SPECIALS))
    return tok


def save_tokenizer(tokenizer, folder: Path) -> None:
    folder = Path(folder)
    if isinstance(tokenizer, TextTagTokenizer):
        tokenizer.save(folder)
    (folder / "tag_tokenizer.json").write_text(json.dumps(tokenizer.to_dict(), ensure_ascii=False), encoding="utf-8")


def load_tokenizer(folder: Path):
    d = json.loads((Path(folder) / "tag_tokenizer.json").read_text(encoding="utf-8"))
    return TagTokenizer.from_dict(d) if d["kind"] == "closed" else TextTagTokenizer.load(Path(folder), d)


#: A key is required for a category when at least this share of its training products carry it.
REQUIRED_SHARE = 0.95
ALL_CATEGORIES = "*"
#: Products' worth of weight the all-products share keeps in a category's own share (exempt_keys).
EXEMPT_PSEUDO_COUNT = 10


def required_keys(categories: Sequence[str | None], tag_lists: Sequence[Sequence[str]],
                  share: float = REQUIRED_SHARE, min_products: int = 20) -> dict[str, list[str]]:
    """Keys nearly every product carries: {"*": keys of nearly all products, category: further keys of
    nearly all of that category's products (categories with `min_products` or more)}. A tagger answers
    these keys for every product (its best value, with its score) instead of staying silent."""
    def frequent(lists: list[Sequence[str]]) -> set[str]:
        counts = Counter(k for tags in lists for k in {tag_key(t) for t in tags if ":" in t})
        return {k for k, c in counts.items() if c >= share * len(lists)}

    everywhere = frequent(list(tag_lists)) if tag_lists else set()
    out = {ALL_CATEGORIES: sorted(everywhere)}
    by_category: dict[str, list[Sequence[str]]] = {}
    for c, tags in zip(categories, tag_lists):
        if c:
            by_category.setdefault(c, []).append(tags)
    for c, lists in sorted(by_category.items()):
        extra = frequent(lists) - everywhere if len(lists) >= min_products else set()
        if extra:
            out[c] = sorted(extra)
    return out


def exempt_keys(categories: Sequence[str | None], tag_lists: Sequence[Sequence[str]], everywhere: Sequence[str],
                share: float = REQUIRED_SHARE, pseudo_count: float = EXEMPT_PSEUDO_COUNT) -> dict[str, list[str]]:
    """{category: the keys of nearly all products (`everywhere`) that this category's products do not
    nearly all carry}: a lipstick has no usage, a shoe lace no season. A category's share is shrunk towards
    the key's share over all products by `pseudo_count` products, so a category of a few products that all
    carry the key keeps it, while one of 17 that never carries it is exempt."""
    counts: Counter[str] = Counter()
    carried: Counter[tuple[str, str]] = Counter()
    for c, tags in zip(categories, tag_lists):
        if c:
            counts[c] += 1
            carried.update((c, k) for k in {tag_key(t) for t in tags if ":" in t})
    total = sum(counts.values())
    out: dict[str, list[str]] = {}
    for key in everywhere:
        overall = sum(carried[(c, key)] for c in counts) / max(total, 1)
        for c, n in sorted(counts.items()):
            if (carried[(c, key)] + pseudo_count * overall) / (n + pseudo_count) < share:
                out.setdefault(c, []).append(key)
    return out
