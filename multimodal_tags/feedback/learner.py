"""A tagger that learns from feedback at once: the model's rows, adjusted by a Calibration re-fitted from
the feedback store (feedback/calibration.py), kept in the store so a restart starts adapted."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data.schema import Product
from ..inference.batch_tagger import BatchTagger
from ..models.tagger import RawPrediction
from .calibration import NEVER, Calibration, Scores, TagRule, apply_judgements, fit_calibration
from .feedback_store import FeedbackStore

SCORE_BATCH = 256


def to_scores(raw: RawPrediction) -> list[Scores]:
    """Per-product Scores of a batch's raw prediction."""
    head, fused = raw.tag_probs.numpy(), raw.fused.numpy()
    generated = raw.generated or [{} for _ in range(len(head))]
    return [Scores(g, h, f) for g, h, f in zip(generated, head, fused)]


def base_rules(tagger: BatchTagger) -> list[TagRule]:
    """The model's own rule for each vocabulary tag, as the tag source applies it."""
    model, source = tagger.model, tagger.tag_source
    floor = float(model.decoder_threshold) if source in ("decoder", "both") else NEVER
    head = model.thresholds.tolist() if source in ("head", "both") else [NEVER] * len(model.tags)
    return [TagRule(floor, h) for h in head]


class LearningTagger:
    """Tags products with a model and what feedback taught it since (see `refit`)."""

    def __init__(self, tagger: BatchTagger, feedback: FeedbackStore, image_root: str | Path):
        self.tagger, self.feedback, self.image_root = tagger, feedback, Path(image_root)
        self.vocab_index = {t: i for i, t in enumerate(tagger.model.tags)}
        self._scores: dict[tuple[str, str], Scores] = {}  # judged products' scores, by (id, content hash)
        self.calibration = self.feedback.load_calibration(tagger.model_id) or Calibration(tagger.model_id)

    @property
    def model_id(self) -> str:
        return self.tagger.model_id

    def tag(self, products: Sequence[Product], image_root: Path | None = None) -> list[dict]:
        """Output rows, with feedback's adjustments (photos under `image_root`, default the tagger's):
        the calibration, then each product's own judgements (people overrule the model)."""
        rows, raw = self.tagger.tag_raw(products, image_root or self.image_root)
        judged = self.feedback.judgements_of(p.id for p in products)
        for row, scores in zip(rows, to_scores(raw)):
            self.calibration.apply(row, scores, self.vocab_index)
            apply_judgements(row, judged.get(row["id"], {}))
        return rows

    def refit(self) -> Calibration:
        """Re-fit the calibration from every judgement in the store (scores of products judged before are
        reused), save it in the store and use it from now on."""
        return self.install(fit_calibration(*self.refit_inputs()))

    def refit_inputs(self) -> tuple:
        """What `fit_calibration` needs, read and scored here (the store's connection and the model's
        thread); the fit itself may then run elsewhere, and `install` its result."""
        events = self.feedback.count()
        judgements = self.feedback.judgements()
        judged = list(self.feedback.tags.products(judgements).values())
        self._score(judged)
        scores = [self._scores[(p.id, p.content_hash)] for p in judged]
        return (self.model_id, self.tagger.model.tags, base_rules(self.tagger), scores,
                [judgements[p.id] for p in judged], events)

    def install(self, cal: Calibration) -> Calibration:
        """Save a calibration fitted for this model and use it from now on."""
        if cal.model_id == self.model_id:  # a model swapped in meanwhile gets its own
            self.feedback.save_calibration(cal)
            self.calibration = cal
        return cal

    def remember(self, products: Sequence[Product], scores: Sequence[Scores]) -> None:
        """Scores computed elsewhere (by `tagger.tag_raw`) for these products: `refit` need not redo them."""
        for p, s in zip(products, scores):
            self._scores[(p.id, p.content_hash)] = s

    def _score(self, products: list[Product]) -> None:
        todo = [p for p in products if (p.id, p.content_hash) not in self._scores]
        for i in range(0, len(todo), SCORE_BATCH):
            batch = todo[i:i + SCORE_BATCH]
            _, raw = self.tagger.tag_raw(batch, self.image_root)
            for p, s in zip(batch, to_scores(raw)):
                self._scores[(p.id, p.content_hash)] = s

