"""multimodal_tags: tag e-commerce products from their text and photos.

The names a user needs, importable from the package (each loads its module on first use, so
`import multimodal_tags` stays cheap):

    from multimodal_tags import get_preset, train_tagger, BatchTagger, read_catalog

- catalogs: `Product`, `read_catalog`, `write_catalog`, `get_importer`, `run_import`
- encoders and models: `list_encoders`, `create_text_encoder`, `create_image_encoder`, `list_presets`,
  `get_preset`, `ModelConfig`, `TrainConfig`, `Tagger`
- jobs: `RunConfig`, `train_tagger`, `evaluate_model`, `tag_catalog`, `BatchTagger`
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Product": "data.schema", "read_catalog": "data.catalog", "write_catalog": "data.catalog",
    "get_importer": "data.importers", "run_import": "data.importers",
    "list_encoders": "models.factory", "create_text_encoder": "models.factory",
    "create_image_encoder": "models.factory", "list_presets": "models.presets", "get_preset": "models.presets",
    "ModelConfig": "config", "TrainConfig": "config", "Tagger": "models.tagger",
    "RunConfig": "features.settings", "train_tagger": "train.job", "evaluate_model": "eval.evaluate",
    "tag_catalog": "tagging.tag_job", "BatchTagger": "inference.batch_tagger",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'multimodal_tags' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
