"""A whole catalog's features for a model config: the one call jobs make before training or scoring."""
from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..data.catalog import Catalog
from ..data.feature_cache import FeatureCache
from .settings import RunConfig
from .source import FeatureSource


def encode_catalog(catalog: Catalog, cfg: ModelConfig, cache_dir: str | Path,
                   settings: RunConfig | None = None) -> FeatureSource:
    """Encode what the cache lacks for the config's encoders; return the catalog's features, in order."""
    settings = settings or RunConfig()
    with FeatureCache(cache_dir) as cache:
        return FeatureSource.encode(catalog.products, settings.encoders_for(cfg), cache, catalog.image_root, cfg,
                                    log=settings.log)
