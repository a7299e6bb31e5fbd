"""Recipes (configs/*.yaml): every committed one loads, and what a recipe file says is what runs."""
from pathlib import Path

import pytest

from multimodal_tags.config import ModelConfig, WordScoreConfig, model_config_from_dict, to_dict
from multimodal_tags.models.presets import get_preset
from multimodal_tags.train.recipe import load_recipe

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe.model, ModelConfig) and recipe.train.epochs > 0


def test_the_benchmark_recipe_is_the_offline_preset_with_its_training(tmp_path):
    recipe = load_recipe(CONFIGS / "myntra-bench.yaml")
    assert recipe.model == get_preset("offline")
    assert recipe.train.masked_copies == 0.4 and recipe.finetune_text.max_products == 16000
    assert recipe.finetune_image.stages == 2


def test_overrides_merge_into_the_preset_section_by_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("preset: offline\nmodel:\n  image_size: 224\n  word_scores: {bias: 1.5}\ntrain: {epochs: 3}\n"
                    "experiment: {note: kept}\n")
    recipe = load_recipe(path)
    offline = get_preset("offline")
    assert recipe.model.image_size == 224 and recipe.model.word_scores.bias == 1.5
    assert recipe.model.word_scores.categories == offline.word_scores.categories  # the rest of the section stays
    assert recipe.train.epochs == 3 and recipe.finetune_text is None and recipe.extra == {"experiment": {"note": "kept"}}


@pytest.mark.parametrize("text, match", [
    ("model: {colour: 3}\n", "unknown ModelConfig fields: colour"),
    ("preset: huge\n", "unknown preset"),
    ("train: 5\n", "section 'train' must be a mapping"),
    ("- a list\n", "a recipe is a mapping"),
    ("model: {a: [\n", "cannot read the recipe"),
])
def test_a_bad_recipe_is_refused_naming_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        load_recipe(path)
    assert "bad.yaml" in str(e.value)


def test_model_folders_saved_with_flat_word_score_fields_still_load():
    old = {k: v for k, v in to_dict(get_preset("offline")).items() if k != "word_scores"}
    old |= {"word_scores": True, "word_score_bias": 4.0, "word_score_per_tag": True, "word_score_categories": True,
            "category_score_bias": 2.0}
    assert model_config_from_dict(old).word_scores == WordScoreConfig(True, 4.0, True, True, 2.0)
    assert model_config_from_dict(to_dict(get_preset("offline"))) == get_preset("offline")


def test_a_run_folder_config_is_a_loadable_recipe(tmp_path):
    from multimodal_tags.config import TrainConfig, save_yaml

    save_yaml(tmp_path / "config.yaml", model=get_preset("tiny"), train=TrainConfig(epochs=2))
    recipe = load_recipe(tmp_path / "config.yaml")
    assert recipe.model == get_preset("tiny") and recipe.train.epochs == 2
