"""What every job that reads features is told: where the cache is, at which precision to encode,
whether random weights are acceptable, and where to log."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig
from .encoders import EncoderSet

CACHE_FOLDER = "features-cache"


def default_cache_dir(catalog_path: str | Path) -> Path:
    """The feature cache a catalog uses when none is named: `features-cache/` beside it."""
    return Path(catalog_path).resolve().parent / CACHE_FOLDER


@dataclass
class RunConfig:
    """The knobs shared by train, evaluate, tag, refresh and the demo."""

    cache_dir: str | Path | None = None  # None: features-cache beside the catalog
    precision: str = "auto"  # encoders' inference precision: auto, fp32, bf16, fp16, int8 (part of the cache key)
    allow_random_weights: bool = False  # accept tiny-*/@random encoders (tests, from-scratch work)
    # where the encoders (and, when tagging, the tagger) run: None or "cpu" (the CPU), or "cuda"
    device: str | None = None
    # how the tag decoder runs (models/static_decode.py): auto ("graphs" on a GPU, "dynamic" on a CPU),
    # dynamic, static or graphs
    decoding: str = "auto"
    # the encoders through torch.compile (models/compiled.py): auto (CPU jobs of 50,000 products or more), on, off
    compile: str = "auto"
    progress: bool = True  # progress bars
    log: Callable[[str], None] = field(default=print, repr=False)

    def cache_for(self, catalog_path: str | Path) -> Path:
        """The cache folder to use for this catalog."""
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir(catalog_path)

    def encoders_for(self, cfg: ModelConfig) -> EncoderSet:
        """The encoders of a model config, with these settings' precision and weights check."""
        return EncoderSet.for_model(cfg, self.precision, self.allow_random_weights, self.device, self.compile)
