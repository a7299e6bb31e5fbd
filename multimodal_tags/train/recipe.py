"""Recipes: one YAML file that says how to train a model (configs/*.yaml), as timm's and open_clip's
training configs do.

    preset: offline            # the model config to start from (`mmtags presets`); omitted: ModelConfig()
    model: {image_size: 128}   # fields of ModelConfig that differ from the preset (nested: decoder, word_scores)
    train: {epochs: 8}         # fields of TrainConfig
    finetune_text: {epochs: 1} # optional: fine-tune the text encoder first (FinetuneConfig)
    finetune_image: {stages: 2, epochs: 3}  # optional: tune the image trunk's last stages (ImageFinetuneConfig)

Any other top-level section (such as `demo:` or `experiment:`) belongs to the program that reads the
recipe and is kept in `Recipe.extra`. A field that does not exist is refused, naming the file and section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ModelConfig, TrainConfig, dataclass_from_dict, model_config_from_dict, to_dict
from ..models.presets import get_preset
from .finetune_image import ImageFinetuneConfig
from .finetune_text import FinetuneConfig

TRAINING_SECTIONS = ("preset", "model", "train", "finetune_text", "finetune_image")


@dataclass
class Recipe:
    model: ModelConfig
    train: TrainConfig
    finetune_text: FinetuneConfig | None = None
    finetune_image: ImageFinetuneConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the other sections, for the program that reads it


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values, section by section for nested dicts."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section(d: dict[str, Any], name: str, path: Path) -> dict[str, Any] | None:
    value = d.get(name)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{path}: section {name!r} must be a mapping of fields, not {type(value).__name__}")
    return value


def load_recipe(path: str | Path) -> Recipe:
    """The recipe in a YAML file (format: this module's docstring)."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the recipe: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a recipe is a mapping of sections ({', '.join(TRAINING_SECTIONS)})")
    try:
        base = to_dict(get_preset(d["preset"])) if d.get("preset") else to_dict(ModelConfig())
        model = model_config_from_dict(_merged(base, _section(d, "model", path) or {}))
        train = dataclass_from_dict(TrainConfig, _section(d, "train", path) or {})
        ft_text, ft_image = (_section(d, s, path) for s in ("finetune_text", "finetune_image"))
        return Recipe(model, train,
                      dataclass_from_dict(FinetuneConfig, ft_text) if ft_text is not None else None,
                      dataclass_from_dict(ImageFinetuneConfig, ft_image) if ft_image is not None else None,
                      {k: v for k, v in d.items() if k not in TRAINING_SECTIONS})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
