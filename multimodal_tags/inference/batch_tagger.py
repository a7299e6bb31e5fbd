"""Tag batches of products with a saved model: features from the cache (encoding only what is new),
then the Tagger, then output rows. Used by `mmtags tag`, `mmtags refresh` and anything that tags
products one batch at a time."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.feature_cache import FeatureCache
from ..files import file_sha256
from ..data.schema import Product
from ..features.settings import RunSettings
from ..features.source import FeatureSource
from ..models.tagger import RawPrediction, Tagger
from ..models.zero_shot import ZeroShotTags, ZeroShotUnavailable
from .rows import DEFAULT_TAG_SOURCE, prediction_rows, resolve_tag_source


def model_id(model_dir: str | Path) -> str:
    """Folder name + hash of the weights: a retrained model gets a new id even in the same folder."""
    folder = Path(model_dir)
    return f"{folder.resolve().name}-{file_sha256(folder / 'model.safetensors')[:12]}"


class BatchTagger:
    """A loaded model and its encoders (built on first use: a refresh with nothing to do loads none)."""

    def __init__(self, model_dir: str | Path, cache_dir: str | Path, settings: RunSettings | None = None,
                 tag_source: str = DEFAULT_TAG_SOURCE):
        settings = settings or RunSettings()
        self.model = Tagger.load(model_dir)
        self.model_id = model_id(model_dir)
        self.cache_dir = Path(cache_dir)
        self.tag_source = resolve_tag_source(tag_source, self.model.decoder is not None, str(model_dir))
        self.encoders = settings.encoders_for(self.model.cfg)
        self.zero_shot: ZeroShotTags | None = None  # see enable_zero_shot

    def enable_zero_shot(self, tags: list[str], calibration: Sequence[Product], image_root: Path,
                         log: Callable[[str], None] = print) -> None:
        """Score `tags` by CLIP image-text similarity too; thresholds from `calibration` products that
        carry labels for them (ZeroShotUnavailable without a CLIP image encoder)."""
        encoder = self.encoders.image
        if encoder is None:
            raise ZeroShotUnavailable("zero-shot tags need an image encoder; this model has none")
        self.zero_shot = ZeroShotTags.build(encoder, tags)
        labelled = [p for p in calibration if p.image and set(p.tags) & set(tags)]
        if not labelled:
            log("zero-shot tags: no labelled validation products; thresholds are uncalibrated")
            return
        source = self.features(labelled, image_root)
        keep = source.has_image.numpy()
        y = np.array([[t in p.tags for t in tags] for p in labelled])[keep]
        self.zero_shot.calibrate(source.image.numpy()[keep], y)
        log(f"zero-shot tags calibrated on {int(keep.sum())} labelled validation products")

    def features(self, products: Sequence[Product], image_root: Path) -> FeatureSource:
        """The products' features, encoding what the cache lacks."""
        with FeatureCache(self.cache_dir) as cache:  # small batches: decode photos in-process
            return FeatureSource.encode(products, self.encoders, cache, image_root, self.model.cfg, num_workers=0)

    def tag(self, products: Sequence[Product], image_root: Path) -> list[dict]:
        """Output rows (id, category, tags with scores and sources, modality weights, model id, content
        hash) for a batch of products."""
        return self.tag_raw(products, image_root)[0]

    @torch.no_grad()
    def tag_raw(self, products: Sequence[Product], image_root: Path) -> tuple[list[dict], RawPrediction]:
        """Output rows and the scores behind them (before thresholds)."""
        source = self.features(products, image_root)
        raw = self.model.predict_raw(source.batch(), generate=self.tag_source != "head")
        rows = prediction_rows(products, self.model.prediction_dicts(raw), self.tag_source, self.model_id)
        if self.zero_shot is not None and self.encoders.image is not None:
            self._add_zero_shot(rows, source)
        return rows, raw

    def _add_zero_shot(self, rows: list[dict], source: FeatureSource) -> None:
        extra_tags = self.zero_shot.predict(source.image.numpy(), source.has_image.numpy())
        for row, extra in zip(rows, extra_tags):
            for tag, sim in extra.items():
                if tag not in row["tag_scores"]:
                    row["tags"].append(tag)
                    row["tag_scores"][tag] = round(sim, 5)
                    row["tag_sources"][tag] = "zero-shot"
