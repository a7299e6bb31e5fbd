"""Zero-shot tags: score tags the model was never trained on by CLIP image-text similarity.

Needs a CLIP image encoder (its text tower embeds an ensemble of prompts per tag); the image side
reuses the cached CLIP image vectors. With labelled validation products, each tag gets the similarity
threshold that maximises its F1 there; without labels, a tag is predicted when a photo is unusually
similar to it (1.5 standard deviations above the tag's mean over the scored photos), reported as
uncalibrated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .image_encoders import OpenClipImageEncoder

# A prompt ensemble, as in CLIP's zero-shot evaluation: a tag's text vector is the normalised mean of
# its prompts' vectors. "key:value" tags fill {key} and {value}; a bare tag ("floral print") is the value.
TEMPLATES = ("a photo of a {value} {key}", "a product photo: {value} {key}", "{value} {key}", "a {value} product")


def tag_prompts(tag: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """The prompts of one tag: 'colour:blue' -> 'a photo of a blue colour', ...; 'v-neck' -> 'a photo of a v-neck'."""
    key, sep, value = tag.partition(":")
    if not sep:
        key, value = "", tag
    return [" ".join(t.format(value=value.strip(), key=key.strip()).split()) for t in templates]


class ZeroShotUnavailable(ValueError):
    """The image encoder has no text tower (e.g. the offline EfficientNet default)."""


@dataclass
class ZeroShotTags:
    tags: list[str]
    text_vectors: np.ndarray  # [tags, dim], L2-normalised
    thresholds: np.ndarray | None = None  # per tag, from validation; None = uncalibrated

    @classmethod
    def build(cls, encoder, tags: list[str], templates: tuple[str, ...] = TEMPLATES) -> "ZeroShotTags":
        """Text vectors of `tags` from the CLIP text tower of `encoder` (an ensemble of `templates`)."""
        if not isinstance(encoder, OpenClipImageEncoder):
            raise ZeroShotUnavailable(
                f"zero-shot tags need a CLIP image encoder with a text tower; {encoder.spec!r} has none "
                f"(train one with `mmtags clip train` and pass --clip mmtags-clip:FOLDER, or use an "
                f"open_clip:ARCH@WEIGHTS image encoder)")
        prompts = [tag_prompts(t, templates) for t in tags]
        flat = encoder.encode_prompts([p for group in prompts for p in group]).view(len(tags), len(templates), -1)
        vec = torch.nn.functional.normalize(flat.mean(1), dim=-1).cpu().numpy()
        return cls(list(tags), vec)

    def similarities(self, image_vectors: np.ndarray) -> np.ndarray:
        x = image_vectors / np.maximum(np.linalg.norm(image_vectors, axis=1, keepdims=True), 1e-12)
        return x @ self.text_vectors.T

    def calibrate(self, image_vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-tag threshold maximising F1 on labelled products (labels: [n, tags] bool)."""
        sims = self.similarities(image_vectors)
        out = np.zeros(len(self.tags), dtype=np.float32)
        for j in range(len(self.tags)):
            grid = np.quantile(sims[:, j], np.linspace(0.5, 0.995, 60))
            y = labels[:, j].astype(bool)
            f1 = [2 * ((sims[:, j] >= g) & y).sum() / max((sims[:, j] >= g).sum() + y.sum(), 1) for g in grid]
            out[j] = grid[int(np.argmax(f1))]
        self.thresholds = out
        return out

    def predict(self, image_vectors: np.ndarray, has_image: np.ndarray) -> list[dict[str, float]]:
        """Per product, {tag: similarity} for the tags over threshold (products without a photo get none)."""
        sims = self.similarities(image_vectors)
        if self.thresholds is not None:
            th = self.thresholds[None, :]
        else:
            ok = sims[has_image] if has_image.any() else sims
            th = (ok.mean(0) + 1.5 * ok.std(0))[None, :]
        hit = (sims >= th) & has_image[:, None]
        return [{self.tags[j]: float(sims[i, j]) for j in np.nonzero(hit[i])[0]} for i in range(len(sims))]
