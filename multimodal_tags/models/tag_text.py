"""Tags as a pretrained LM writes them, and the trie that keeps its decoding to the vocabulary.

A tag `key:value` is written ` key: value;` (a tag without a key: ` tag;`), one after another in a fixed
order (most frequent key first), then the LM's end-of-text token: `colour: navy blue; pattern: checked;`.
Each tag's text is tokenized on its own, so a product's target is the concatenation of its tags' token
sequences and the trie over those sequences is exactly what training showed the LM.

Decoding walks the trie (`TagTrie`): at its root the LM may end, or start any tag still allowed (not
given yet; no second value of a single-valued key); inside a tag only the tokens that continue a
vocabulary tag. A tag's score is the product of its tokens' probabilities under those rules.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from .tag_tokenizer import single_valued_keys, tag_key

PROMPT_TITLE, PROMPT_DESCRIPTION, PROMPT_END = "Title: ", "\nDescription: ", "\nTags:"
END_OF_TAG = ";"


def tag_text(tag: str) -> str:
    """The text the LM writes for one tag: ` key: value;` (a `;` inside a tag is written `,`, so that a
    tag's text never holds the end of another)."""
    tag = tag.replace(END_OF_TAG, ",")
    if ":" in tag:
        key, value = tag.split(":", 1)
        return f" {key.strip()}: {value.strip()}{END_OF_TAG}"
    return f" {tag.strip()}{END_OF_TAG}"


def key_prompt(key: str) -> str:
    """What follows the prompt to ask the LM for one key's value: ` key:`."""
    return f" {key.strip()}:"


def value_from_text(text: str) -> str:
    """A written value (what follows ` key:`) up to the end of the tag, tidied: `short sleeves`."""
    return " ".join(text.split(END_OF_TAG, 1)[0].split("\n", 1)[0].split()).lower()


class _Node:
    __slots__ = ("children", "tag", "below")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.tag = -1  # the tag index that ends here (-1: none)
        self.below: list[int] = []  # every tag index whose path passes through this node


class TagTrie:
    """The vocabulary's tags as token sequences, for constrained decoding and training targets."""

    def __init__(self, tokenizer, tags: Sequence[str], single_valued: Iterable[str] = (),
                 key_order: Sequence[str] = ()):
        self.tags = list(tags)
        self.index = {t: i for i, t in enumerate(self.tags)}
        self.single_valued = set(single_valued)
        keys = list(dict.fromkeys([*key_order, *sorted({tag_key(t) for t in self.tags})]))
        rank = {k: i for i, k in enumerate(keys)}
        self.key_order = keys
        self._rank = [(rank[tag_key(t)], t) for t in self.tags]
        self.key_of = [tag_key(t) for t in self.tags]
        self.pieces = [tokenizer.encode(tag_text(t), add_special_tokens=False) for t in self.tags]
        self.eos = tokenizer.eos_token_id
        self.root = _Node()
        for i, ids in enumerate(self.pieces):
            node = self.root
            node.below.append(i)
            for tok in ids:
                node = node.children.setdefault(tok, _Node())
                node.below.append(i)
            node.tag = i

    @classmethod
    def fit(cls, tokenizer, vocab: Sequence[str], train_tags: Iterable[Sequence[str]],
            first_key: str | None = None) -> "TagTrie":
        """Keys ordered by their frequency in `train_tags` (`first_key`, single-valued, before all)."""
        train_tags = [list(t) for t in train_tags]
        key_counts = Counter(tag_key(t) for tags in train_tags for t in tags)
        order = [k for k, _ in key_counts.most_common() if k != first_key]
        single = set(single_valued_keys(train_tags))
        if first_key is not None:
            order, single = [first_key, *order], single | {first_key}
        return cls(tokenizer, vocab, single, order)

    def target(self, tags: Iterable[str]) -> list[int]:
        """The token ids the LM is taught for a tag set: its known tags in order, then end-of-text."""
        known = sorted((self.index[t] for t in set(tags) if t in self.index), key=self._rank.__getitem__)
        return [tok for i in known for tok in self.pieces[i]] + [self.eos]

    def to_dict(self) -> dict:
        return {"tags": self.tags, "single_valued": sorted(self.single_valued), "key_order": self.key_order}


class TrieWalk:
    """One product's place in the trie while it is decoded: which tokens may come next, and the tags
    finished so far with their scores."""

    def __init__(self, trie: TagTrie):
        self.trie, self.node = trie, trie.root
        self.used: set[int] = set()
        self.used_keys: set[str] = set()
        self.score = 1.0
        self.done = False
        self.tags: list[tuple[str, float]] = []

    def _open(self, i: int) -> bool:
        key = self.trie.key_of[i]
        return i not in self.used and not (key in self.trie.single_valued and key in self.used_keys)

    def allowed(self) -> list[int]:
        """Token ids that may come next (end-of-text only at the root, between tags)."""
        out = [tok for tok, child in self.node.children.items() if any(map(self._open, child.below))]
        if self.node is self.trie.root:
            out.append(self.trie.eos)
        return out

    def allowed_with_prior(self, prior) -> tuple[list[int], list[float]]:
        """`allowed()` with each token's prior: the largest `prior[i]` (a probability per trie tag, from the
        tagger's heads) of an open tag i below it; end-of-text's is 1 - the largest open one (no tag left
        that the heads believe in)."""
        tokens, best = [], []
        for tok, child in self.node.children.items():
            below = [prior[i] for i in child.below if self._open(i)]
            if below:
                tokens.append(tok)
                best.append(max(below))
        if self.node is self.trie.root:
            tokens.append(self.trie.eos)
            best.append(1.0 - max(best, default=0.0))
        return tokens, best

    def step(self, token: int, prob: float) -> None:
        """Take one generated token (one of `allowed()`) with its probability."""
        if self.node is self.trie.root and token == self.trie.eos:
            self.done = True
            return
        self.node, self.score = self.node.children[token], self.score * prob
        if self.node.tag >= 0 and not self.node.children:  # a tag is complete: back to the root
            i = self.node.tag
            self.tags.append((self.trie.tags[i], self.score))
            self.used.add(i)
            self.used_keys.add(self.trie.key_of[i])
            self.node, self.score = self.trie.root, 1.0
