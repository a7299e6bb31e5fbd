"""Immediate adaptation: per-tag decision rules and new tags, re-fitted from feedback in seconds.

For every tag of the vocabulary that feedback judged, a rule "propose when the decoder's probability
>= d or the tag head's >= h" is chosen on the judged products to maximise (to first order) micro-F1 (the other tags
fixed), and kept only when choosing that way beats the model's own rule out of fold: a tag
users keep rejecting gets a higher bar, one they keep adding a lower one (or the head's say).
A tag users add that the model has never seen becomes a known tag, scored by a logistic regression on
the model's fused product vector, learned from the judged products (those it was added to, and the
others). A judged product's unproposed, un-added tags count as wrong: whoever judges a product adds
what it lacks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

NEVER = float("inf")
DECODER_GRID = (NEVER, *(round(0.05 * i, 2) for i in range(1, 20)))
HEAD_GRID = (NEVER, *(round(0.05 * i, 2) for i in range(4, 20)))
MIN_NEW_TAG_PRODUCTS = 5  # a new tag needs this many products it was added to
# A rule must beat the model's, out of fold, by more than this many wrong tags' worth. Per-tag rules
# are noisy (a tag's errors cluster in product lines), so the bar is high; the settings were chosen
# with experiments/feedback_simulation.py (docs/experiments.md).
MARGIN_WRONG_TAGS = 5
CV_FOLDS = 5
RULE_FAMILY = "separate"  # see _family


@dataclass
class Scores:
    """One product's scores before thresholds: generated tags (probability), the head's probabilities
    for every vocabulary tag, and the fused vector."""

    generated: dict[str, float]
    head: np.ndarray
    fused: np.ndarray


@dataclass
class TagRule:
    decoder_min: float = NEVER
    head_min: float = NEVER

    def proposes(self, decoder_p: np.ndarray, head_p: np.ndarray) -> np.ndarray:
        return (decoder_p >= self.decoder_min) | (head_p >= self.head_min)


@dataclass
class NewTag:
    """A logistic regression on standardised fused vectors, with an F1-tuned threshold."""

    weights: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    threshold: float
    products: int  # positives it was learned from

    def probability(self, fused: np.ndarray) -> np.ndarray:
        z = ((fused - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.weights) + self.bias
        return 1 / (1 + np.exp(-z))


@dataclass
class Calibration:
    """What feedback changed for one model: rules for judged tags and the new tags."""

    model_id: str
    rules: dict[str, TagRule] = field(default_factory=dict)
    new_tags: dict[str, NewTag] = field(default_factory=dict)
    events: int = 0  # feedback events it was fitted on

    def to_dict(self) -> dict:
        return {"model_id": self.model_id, "events": self.events,
                "rules": {t: asdict(r) for t, r in self.rules.items()},
                "new_tags": {t: asdict(n) for t, n in self.new_tags.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(d["model_id"], {t: TagRule(**r) for t, r in d["rules"].items()},
                   {t: NewTag(**n) for t, n in d["new_tags"].items()}, d.get("events", 0))

    def apply(self, row: dict, scores: Scores, vocab_index: dict[str, int]) -> dict:
        """The output row with feedback's rules and new tags applied (in place; also returned)."""
        for tag, rule in self.rules.items():
            dec, head = scores.generated.get(tag, -1.0), float(scores.head[vocab_index[tag]])
            if bool(rule.proposes(np.float32(dec), np.float32(head))):
                if tag not in row["tag_scores"]:
                    _add(row, tag, max(dec, head), "feedback")
            elif tag in row["tag_scores"]:
                _remove(row, tag)
        for tag, model in self.new_tags.items():
            p = float(model.probability(scores.fused[None])[0])
            if p >= model.threshold and tag not in row["tag_scores"]:
                _add(row, tag, p, "feedback")
        row["tags"] = sorted(row["tag_scores"], key=lambda t: -row["tag_scores"][t])
        return row


def apply_judgements(row: dict, judged: dict[str, bool]) -> dict:
    """A product's row with its own judgements applied: what people rejected goes, what they accepted
    or added stays (source "feedback" for tags the model did not propose)."""
    for tag, right in judged.items():
        if not right:
            _remove(row, tag)
        elif tag not in row["tag_scores"]:
            _add(row, tag, 1.0, "feedback")
    row["tags"] = sorted(row["tag_scores"], key=lambda t: -row["tag_scores"][t])
    return row


def _add(row: dict, tag: str, score: float, source: str) -> None:
    row["tag_scores"][tag] = round(float(score), 5)
    row["tag_sources"][tag] = source


def _remove(row: dict, tag: str) -> None:
    row["tag_scores"].pop(tag, None)
    row["tag_sources"].pop(tag, None)


def _f1(tp: np.ndarray | int, fp: np.ndarray | int, fn: np.ndarray | int) -> np.ndarray:
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


@dataclass
class Judged:
    """Judged products as matrices over the vocabulary: decoder probabilities (-1: not generated),
    head probabilities, the model's own decisions, and labels (1 right, 0 wrong, -1 unknown)."""

    decoder: np.ndarray
    head: np.ndarray
    base: np.ndarray
    labels: np.ndarray
    base_rules: list[TagRule]

    @classmethod
    def build(cls, scores: list[Scores], judgements: list[dict[str, bool]], vocab: list[str],
              base_rules: list[TagRule]) -> "Judged":
        index = {t: i for i, t in enumerate(vocab)}
        n, v = len(scores), len(vocab)
        decoder = np.full((n, v), -1.0, np.float32)
        labels = np.full((n, v), -1, np.int8)
        for i, (s, j) in enumerate(zip(scores, judgements)):
            for tag, p in s.generated.items():
                if tag in index:
                    decoder[i, index[tag]] = p
            for tag, right in j.items():
                if tag in index:
                    labels[i, index[tag]] = int(right)
        head = np.stack([s.head for s in scores]).astype(np.float32) if scores else np.zeros((0, v), np.float32)
        base = np.stack([r.proposes(decoder[:, k], head[:, k]) for k, r in enumerate(base_rules)], 1) \
            if n else np.zeros((0, v), bool)
        labels[(labels < 0) & ~base] = 0  # unproposed and not added: wrong (see the module docstring)
        return cls(decoder, head, base, labels, list(base_rules))

    def counts(self, pred: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(tp, fp, fn) of predictions [..., n] for tag column k, over its known labels (of `rows`)."""
        labels = self.labels[:, k] if rows is None else self.labels[rows, k]
        y, known = labels == 1, labels >= 0
        return ((pred & y & known).sum(-1), (pred & ~y & known).sum(-1), (~pred & y & known).sum(-1))


def fit_calibration(model_id: str, vocab: list[str], base_rules: list[TagRule], scores: list[Scores],
                    judgements: list[dict[str, bool]], events: int = 0) -> Calibration:
    """Rules for the judged vocabulary tags and models for new tags, from judged products' scores."""
    cal = Calibration(model_id, events=events)
    if not scores:
        return cal
    data = Judged.build(scores, judgements, vocab, base_rules)
    total = np.array([sum(c) for c in zip(*(data.counts(data.base[:, k], k) for k in range(len(vocab))))])
    judged_tags = {t for j in judgements for t in j}
    for k, tag in enumerate(vocab):
        if tag in judged_tags:
            rule = _best_rule(data, k, total)
            if rule is not None:
                cal.rules[tag] = rule
    fused = np.stack([s.fused for s in scores]).astype(np.float32)
    for tag in sorted(judged_tags - set(vocab)):
        y = np.array([j.get(tag, False) for j in judgements])
        if y.sum() >= MIN_NEW_TAG_PRODUCTS and (~y).sum() >= MIN_NEW_TAG_PRODUCTS:
            cal.new_tags[tag] = fit_new_tag(fused, y)
    return cal


def _best_rule(data: Judged, k: int, total: np.ndarray) -> TagRule | None:
    """The grid rule with the best utility for tag k, kept only if choosing it pays off out of fold: on
    each fold, the rule chosen on the other folds must beat the model's own rule, summed over the
    folds, by more than MARGIN_WRONG_TAGS wrong tags. A rule picked and scored on the same judgements
    would look better than it is (that is how a threshold overfits).

    Utility: w * right tags - wrong tags, with w = 1 + (FP + FN) / TP at the model's operating point:
    to first order, the change of micro-F1 when one tag is added or dropped (the other tags fixed)."""
    d = np.array(DECODER_GRID, np.float32)[:, None, None]
    h = np.array(HEAD_GRID, np.float32)[None, :, None]
    pred = (data.decoder[:, k] >= d) | (data.head[:, k] >= h)  # [grid_d, grid_h, n]
    fold = np.arange(len(data.labels)) % CV_FOLDS
    per_fold = [np.array(data.counts(pred[..., fold == f], k, fold == f)) for f in range(CV_FOLDS)]  # [3, gd, gh]
    w = 1 + (total[1] + total[2]) / total[0] if total[0] else 1.0

    def utility(counts: np.ndarray) -> np.ndarray:
        return w * counts[0] - counts[1]

    allowed = _family(data.base_rules[k])

    def choose(counts: np.ndarray) -> tuple[int, int]:
        return np.unravel_index(np.argmax(np.where(allowed, utility(counts), -np.inf)), counts.shape[1:])

    out_of_fold = sum(per_fold[f][:, i, j] for f in range(CV_FOLDS)
                      for i, j in [choose(sum(per_fold) - per_fold[f])])
    if utility(out_of_fold) - utility(np.array(data.counts(data.base[:, k], k))) <= MARGIN_WRONG_TAGS:
        return None
    i, j = choose(sum(per_fold))
    return TagRule(float(DECODER_GRID[i]), float(HEAD_GRID[j]))


def _family(base: TagRule) -> np.ndarray:
    """The rules a tag may get [grid_d, grid_h]: RULE_FAMILY "grid" is every pair; "separate" is a
    decoder threshold alone, a head threshold alone, or the model's decoder threshold plus a head one
    (fewer candidates: less to overfit)."""
    d, h = np.array(DECODER_GRID)[:, None], np.array(HEAD_GRID)[None, :]
    if RULE_FAMILY == "grid":
        return np.ones((len(DECODER_GRID), len(HEAD_GRID)), bool)
    near = DECODER_GRID[int(np.argmin([abs(x - base.decoder_min) if x != NEVER else np.inf for x in DECODER_GRID]))] \
        if base.decoder_min != NEVER else NEVER
    return (h == NEVER) | (d == NEVER) | (d == near)


def fit_new_tag(fused: np.ndarray, y: np.ndarray, seed: int = 0) -> NewTag:
    """A logistic regression for one new tag; its threshold maximises cross-validated F1."""
    mean, scale = fused.mean(0), fused.std(0) + 1e-6
    x = (fused - mean) / scale
    clf = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")
    threshold = 0.5
    folds = int(min(5, y.sum(), (~y).sum()))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        p = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
        grid = np.linspace(0.05, 0.95, 19)
        f1 = [_f1(((p >= g) & y).sum(), ((p >= g) & ~y).sum(), ((p < g) & y).sum()) for g in grid]
        threshold = float(grid[int(np.argmax(f1))])
    clf.fit(x, y)
    return NewTag(clf.coef_[0].tolist(), float(clf.intercept_[0]), mean.tolist(), scale.tolist(), threshold,
                  int(y.sum()))
