"""Tag batches of products with a saved model: features from the cache (encoding only what is new),
then the Tagger. Shared by `mmtags tag` and `mmtags refresh`."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.feature_cache import FeatureCache
from ..data.schema import Product
from ..eval.predict import prediction_rows
from ..features import encode_and_load
from ..models.factory import create_image_encoder, create_text_encoder, require_pretrained
from ..models.lexical import product_lexical_matrix
from ..models.tagger import Batch, Tagger


def model_id(model_dir: str | Path) -> str:
    """Folder name + hash of the weights: a retrained model gets a new id even in the same folder."""
    folder = Path(model_dir)
    h = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{folder.resolve().name}-{h.hexdigest()[:12]}"


class BatchTagger:
    """A loaded model and its encoders (built on first use: a refresh with nothing to do loads none)."""

    def __init__(self, model_dir: str | Path, cache_dir: str | Path, tag_source: str = "both",
                 precision: str = "auto", allow_random_weights: bool = False):
        self.model = Tagger.load(model_dir)
        self.model_id = model_id(model_dir)
        self.cache_dir, self.tag_source, self.precision = Path(cache_dir), tag_source, precision
        self.allow_random_weights = allow_random_weights
        self._encoders: dict[str, object] | None = None
        self.zero_shot = None  # ZeroShotTags, see enable_zero_shot
        if tag_source != "head" and self.model.decoder is None:
            raise ValueError(f"{model_dir} has no tag decoder: use --tag-source head")

    def encoders(self) -> dict[str, object]:
        if self._encoders is None:
            cfg, enc = self.model.cfg, {}
            if cfg.text_encoder != "none":
                enc["text"] = create_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length)
            if cfg.image_encoder != "none":
                enc["image"] = create_image_encoder(cfg.image_encoder)
            for e in enc.values():
                e.set_precision(self.precision)
                require_pretrained(e, self.allow_random_weights)
            self._encoders = enc
        return self._encoders

    def enable_zero_shot(self, tags: list[str], calibration: Sequence[Product], image_root: Path,
                         log=print) -> None:
        """Score `tags` by CLIP image-text similarity too; thresholds from `calibration` products that
        carry labels for them (ZeroShotUnavailable without a CLIP image encoder)."""
        from ..models.zero_shot import ZeroShotTags, ZeroShotUnavailable

        enc = self.encoders().get("image")
        if enc is None:
            raise ZeroShotUnavailable("zero-shot tags need an image encoder; this model has none")
        self.zero_shot = ZeroShotTags.build(enc, tags)
        labelled = [p for p in calibration if p.image and set(p.tags) & set(tags)]
        if labelled:
            feats = self._features(labelled, image_root)
            keep = feats["has_image"]
            y = np.array([[t in p.tags for t in tags] for p in labelled])[keep]
            self.zero_shot.calibrate(feats["image"][keep], y)
            log(f"zero-shot tags calibrated on {int(keep.sum())} labelled validation products")
        else:
            log("zero-shot tags: no labelled validation products; thresholds are uncalibrated")

    def _features(self, products: Sequence[Product], image_root: Path) -> dict:
        enc = self.encoders()
        with FeatureCache(self.cache_dir) as cache:  # small batches: decode photos in-process
            return encode_and_load(products, cache, image_root, enc.get("text"), enc.get("image"), num_workers=0)

    @torch.no_grad()
    def tag(self, products: Sequence[Product], image_root: Path) -> list[dict]:
        """Prediction rows (id, category, tags with scores and sources, modality weights, model id,
        content hash) for a batch of products."""
        cfg = self.model.cfg
        feats = self._features(products, image_root)
        n = len(products)
        batch = Batch(text=torch.from_numpy(feats["text"]) if "text" in feats else torch.zeros(n, cfg.text_dim),
                      image=torch.from_numpy(feats["image"]) if "image" in feats else torch.zeros(n, cfg.image_dim),
                      has_text=torch.from_numpy(feats["has_text"]) if "has_text" in feats else torch.zeros(n, dtype=torch.bool),
                      has_image=torch.from_numpy(feats["has_image"]) if "has_image" in feats else torch.zeros(n, dtype=torch.bool),
                      lexical_ids=torch.from_numpy(product_lexical_matrix(products, cfg.lexical_buckets))
                      if cfg.lexical_buckets else None)
        preds = self.model.predict(batch, generate=self.tag_source != "head")
        rows = prediction_rows(products, preds, self.tag_source, self.model_id)
        if self.zero_shot is not None and "image" in feats:
            for row, extra in zip(rows, self.zero_shot.predict(feats["image"], feats["has_image"])):
                for tag, sim in extra.items():
                    if tag not in row["tag_scores"]:
                        row["tags"].append(tag)
                        row["tag_scores"][tag] = round(sim, 5)
                        row["tag_sources"][tag] = "zero-shot"
        return rows
