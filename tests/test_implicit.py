"""Implicit attributes: masked texts, the colour descriptor, the photo head, required keys, masked copies."""
import json

import numpy as np
import pytest
import torch

from conftest import synthetic_catalog
from multimodal_tags.config import TrainConfig
from multimodal_tags.data.masking import (GENDER_WORDS, WordMask, category_words, colour_words, key_vocabularies,
                                          label_word_view, mask_products, word_forms)
from multimodal_tags.data.schema import Product
from multimodal_tags.features import RunConfig
from multimodal_tags.inference.rows import prediction_row
from multimodal_tags.models.colour_descriptor import DIM, colour_histogram
from multimodal_tags.models.factory import create_image_encoder
from multimodal_tags.models.presets import get_preset
from multimodal_tags.models.tag_tokenizer import TagTokenizer, exempt_keys, required_keys
from multimodal_tags.models.tagger import Tagger
from multimodal_tags.models.word_scores import cross_fitted_scores
from multimodal_tags.train.finetune_text import TrainTexts
from multimodal_tags.train.job import train_tagger

SHIRT = Product("1", "Nike Men Navy-Blue Polo Tshirts", "A navy blue cotton T-shirt with short sleeves",
                category="Tshirts", tags=["colour:navy blue", "fabric:cotton", "sleeve length:short sleeves",
                                          "gender:men"])


def test_masks_remove_whole_words_case_insensitive_in_every_form():
    mask = WordMask(colour_words([["colour:navy blue", "colour:black"]]))
    assert mask("BLACK shoe, Navy-Blue trim; blackish navyblue blacks") == "shoe, - trim; blackish navyblue"
    assert word_forms("dresses") >= {"dresses", "dress"} and word_forms("shoe") >= {"shoe", "shoes"}
    assert mask("") == "" and WordMask([])("Blue") == "Blue"
    # function words of a name are kept: "Ties and Cufflinks" does not remove "and"
    assert "and" not in category_words(["Ties and Cufflinks"]) and {"tie", "cufflink"} <= category_words(["Ties and Cufflinks"])


def test_masked_variants_keep_id_photo_and_labels():
    colours, categories = colour_words([SHIRT.tags]), category_words(["Tshirts", "Casual Shoes"])
    only_colour = mask_products([SHIRT], colours)[0]
    assert only_colour.title == "Nike Men - Polo Tshirts" and "navy" not in only_colour.description.lower()
    everything = mask_products([SHIRT], colours | categories | GENDER_WORDS, own_tags=True)[0]
    assert everything.title == "Nike - Polo" and everything.description == "A T-shirt with"
    assert (everything.id, everything.image, everything.tags, everything.category) == (
        SHIRT.id, SHIRT.image, SHIRT.tags, SHIRT.category)


def test_label_word_views_are_seeded_and_drop_whole_label_groups():
    views = [label_word_view(SHIRT, seed).text for seed in range(40)]
    assert views == [label_word_view(SHIRT, seed).text for seed in range(40)]
    assert any("navy" not in v.lower() for v in views) and any("navy" in v.lower() for v in views)
    # the two words of one value go together: never "navy" without "blue"
    assert all(("navy" in v.lower()) == ("blue" in v.lower()) for v in views)


def test_colour_histogram_sees_the_product_not_the_background():
    img = torch.ones(2, 3, 32, 32)  # white studio background
    img[0, :, 8:24, 8:24] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # a red product
    img[1, :, 8:24, 8:24] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]  # a blue one
    h = colour_histogram(img)
    assert h.shape == (2, DIM) and torch.allclose((h ** 2).sum(1), torch.ones(2))
    red, blue = 7 * 64 + 0 * 8 + 0, 0 * 64 + 0 * 8 + 7
    assert h[0, red] == 1 and h[1, blue] == 1  # all of the product region, none of the white


def test_colour_described_encoder_appends_the_histogram_and_has_its_own_cache_key():
    base, described = create_image_encoder("tiny-clip"), create_image_encoder("tiny-clip+colour")
    assert described.dim == base.dim + DIM and described.spec == "tiny-clip+colour"
    assert described.cache_key() != base.cache_key()
    from PIL import Image

    out = described.encode([Image.new("RGB", (40, 40), (200, 20, 20))]).pooled
    assert out.shape == (1, base.dim + DIM) and torch.isfinite(out).all()


def test_required_keys_are_those_nearly_every_product_carries():
    cats = ["Shirts"] * 30 + ["Watches"] * 30
    tags = [["colour:blue", "gender:men", "sleeve length:short"]] * 30 + [["colour:black", "gender:men"]] * 20 + [["colour:red"]] * 10
    req = required_keys(cats, tags)
    assert req["*"] == ["colour"]  # gender: 50 of 60 products, under 95%
    assert req["Shirts"] == ["gender", "sleeve length"] and "Watches" not in req  # 20 of 30 watches


def test_categories_that_rarely_carry_a_key_of_all_products_are_exempt_from_answering_it(tmp_path):
    cats = ["Shirts"] * 400 + ["Laces"] * 17 + ["Belts"] * 30 + ["Rings"] * 2
    tags = ([["colour:blue", "usage:casual"]] * 400 + [["colour:black"]] * 17
            + [["colour:brown", "usage:casual"]] * 29 + [["colour:brown"]] + [["colour:gold", "usage:casual"]] * 2)
    req = required_keys(cats, tags)
    assert req["*"] == ["colour", "usage"]  # 431 of 449 products carry usage
    exempt = exempt_keys(cats, tags, req["*"])
    assert exempt == {"Laces": ["usage"]}  # no lace has usage; one belt in 30 without it is no rule
    model = Tagger(get_preset("tiny"), ["Laces", "Rings", "Shirts"], ["colour:black", "usage:casual"],
                   required=req, required_exempt=exempt)
    probs = torch.tensor([0.7, 0.6])
    assert set(model.required_answers("Laces", probs)) == {"colour"}
    assert set(model.required_answers("Rings", probs)) == {"colour", "usage"}
    model.save(tmp_path / "m")
    assert Tagger.load(tmp_path / "m").required_exempt == {"Laces": ["usage"]}


def test_text_fine_tuning_sees_a_seeded_share_of_label_word_views_drawn_again_each_epoch():
    products = [Product(str(i), f"Nike Men Navy Blue Polo Tshirts {i}", "navy blue cotton", category="Tshirts",
                        tags=["colour:navy blue", "gender:men"]) for i in range(400)]
    texts = TrainTexts(products, {"Tshirts": 0}, {"colour:navy blue": 0, "gender:men": 1}, masked_share=0.4)
    first = {i for i in range(400) if texts.is_masked(i)}
    assert 120 < len(first) < 200
    assert texts[0][1:] == (0, [0, 1])  # labels unchanged
    assert all(len(texts[i][0]) <= len(products[i].text) for i in first)
    assert any(texts[i][0] != products[i].text for i in first)
    texts.epoch = 1
    assert {i for i in range(400) if texts.is_masked(i)} != first
    plain = TrainTexts(products, {"Tshirts": 0}, {}, masked_share=0.0)
    assert [plain[i][0] for i in range(400)] == [p.text for p in products]
    with pytest.raises(ValueError, match="masked_share"):
        TrainTexts(products, {}, {}, masked_share=1.5)


def test_a_view_silent_about_a_key_loses_the_words_of_all_its_values_not_only_its_own():
    other = Product("2", "Puma Women White Dress", "white and red print", category="Dresses",
                    tags=["colour:white", "gender:women", "pattern:printed"])
    shirt = Product("1", "Nike Men Navy Blue Polo Tshirts", "navy blue with white buttons and red print",
                    category="Tshirts", tags=["colour:navy blue", "gender:men", "pattern:printed"])
    vocabularies = key_vocabularies([shirt, other])
    views = [label_word_view(shirt, seed, drop=1.0, vocabularies=vocabularies) for seed in range(3)]
    assert views[0].title == "Nike Polo" and views[0].description == "with buttons and red print"  # not labels
    own = label_word_view(shirt, 0, drop=1.0)
    assert own.description == "with white buttons and red print"  # another colour's word stays
    kept = label_word_view(shirt, 0, drop=0.0, vocabularies=vocabularies)
    assert kept.text == shirt.text


def test_rows_fill_required_keys_the_tags_leave_unanswered_and_say_so():
    pred = {"category": "Tshirts", "category_score": 0.9, "generated_tags": {"fabric:cotton": 0.8},
            "head_tags": {}, "required": {"colour": ["colour:red", 0.41], "fabric": ["fabric:silk", 0.3]}}
    row = prediction_row(SHIRT, pred, "decoder")
    assert row["tags"] == ["fabric:cotton", "colour:red"]  # fabric was answered: not filled again
    assert row["tag_sources"] == {"fabric:cotton": "decoder", "colour:red": "filled"}
    assert row["tag_scores"]["colour:red"] == 0.41


def test_masked_copies_are_scored_by_the_svms_of_their_products_fold():
    rng = np.random.default_rng(0)
    ids = np.sort(rng.integers(1, 200, (60, 6)), axis=1)
    y = (rng.random((60, 3)) < 0.4).astype(np.int64)
    y[:, 0] = (ids[:, 0] < 40).astype(np.int64)  # a tag the words decide
    extra_of = np.array([3, 17, 42])
    scores, w, b = cross_fitted_scores(ids, y, 256, folds=3, c=1.0)
    with_copies, w2, b2 = cross_fitted_scores(ids, y, 256, folds=3, c=1.0, extra_ids=ids[extra_of], extra_of=extra_of)
    assert np.allclose(with_copies[:60], scores) and np.allclose(w, w2) and np.allclose(b, b2)
    assert np.allclose(with_copies[60:], scores[extra_of], atol=1e-5)  # same text, same fold: same score


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return synthetic_catalog(tmp_path_factory.mktemp("implicit-shop"), 120)


def test_training_with_masked_copies_and_the_photo_head(shop, tmp_path):
    cfg = get_preset("tiny")
    cfg.photo_scores = True
    tcfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, seed=1, masked_copies=0.5)
    logs = []
    settings = RunConfig(allow_random_weights=True, log=logs.append)
    result = train_tagger(shop, tmp_path / "run", cfg, tcfg, settings)
    assert any("masked copies: " in line for line in logs)
    assert result["metrics"]["test"]["decoder"]["products"] > 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "train_photo_loss" in history["history"][0]
    model_cfg = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert "required_keys" in model_cfg


def test_single_value_loss_is_the_cross_entropy_within_each_key():
    from multimodal_tags.models.heads import single_value_loss, value_group_index

    logits = torch.randn(3, 6)
    tags = torch.tensor([[1., 0., 0., 0., 1., 0.],  # key A = columns 0-2, key B = columns 3-4; column 5 is free
                         [0., 1., 1., 0., 0., 1.],  # two values of A: not a single answer, left out
                         [0., 0., 0., 0., 0., 0.]])  # neither key
    index, mask = value_group_index([[0, 1, 2], [3, 4]])
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[0:1, 0:3], torch.tensor([0])),
                            torch.nn.functional.cross_entropy(logits[0:1, 3:5], torch.tensor([1]))]).mean()
    assert torch.allclose(single_value_loss(logits, tags, index, mask), expected)
    assert single_value_loss(logits, tags[2:], index, mask) is None
    assert single_value_loss(logits, tags, *value_group_index([])) is None


def test_photo_head_learning_rate_leaves_its_decoder_weights_alone():
    from multimodal_tags.train.loop import _learning_rates, _param_groups

    cfg = get_preset("tiny")
    cfg.photo_scores = True
    tags = ["colour:red", "colour:blue", "gender:men", "gender:women", "fabric:cotton"]
    tok = TagTokenizer(tags, single_valued=["colour", "gender"])
    model = Tagger(cfg, ["shirts", "shoes"], tags, tok)
    assert model.photo_head.group_index.tolist() == [[0, 1], [2, 3]]
    rates = _learning_rates(TrainConfig(lr=1e-3, photo_lr=1e-2))
    by_name = {id(p): g["lr"] for g in _param_groups(model, 0.01, 1e-3, rates) for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_name[id(named["photo_head.linear.weight"])] == 1e-2
    assert by_name[id(named["photo_head.tag_weight"])] == 1e-3  # learns from the decoder's loss
    assert _learning_rates(TrainConfig()) is None


def test_photo_head_probe_experiment(shop, tmp_path):
    from experiments import photo_head_probe

    cfg = get_preset("tiny")
    cfg.photo_scores = True
    settings = RunConfig(allow_random_weights=True, log=lambda s: None, progress=False, cache_dir=tmp_path / "cache")
    train_tagger(shop, tmp_path / "run", cfg, TrainConfig(epochs=1, batch_size=16, seed=1), settings)
    result = photo_head_probe.main(["--model", str(tmp_path / "run" / "model"), "--catalog", str(shop),
                                    "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
                                    "--epochs", "1", "--batch-size", "32", "--allow-random-weights"])
    assert [r["setting"] for r in result["rows"]] == [s[0] for s in photo_head_probe.SETTINGS]
    assert all(0 <= r["val_colour_acc"] <= 1 and 0 <= r["train_category_acc"] <= 1 for r in result["rows"])
    assert (tmp_path / "out" / "results.json").exists()


def test_no_photo_or_no_text_still_gets_tags_and_required_keys(shop, tmp_path):
    from multimodal_tags.data.catalog import read_catalog, write_catalog
    from multimodal_tags.inference.batch_tagger import BatchTagger

    cfg = get_preset("tiny")
    cfg.photo_scores = True
    settings = RunConfig(allow_random_weights=True, log=lambda s: None, progress=False)
    train_tagger(shop, tmp_path / "run", cfg, TrainConfig(epochs=1, batch_size=16, seed=1), settings)
    catalog = read_catalog(shop)
    test = [p for p in catalog.products if p.split == "test"][:4]
    test[0].image, test[0].image_hash = None, None  # text only
    test[1].title, test[1].description = "", ""  # photo only
    path = tmp_path / "odd.jsonl"
    write_catalog(test, path, meta=catalog.meta)
    tagger = BatchTagger(tmp_path / "run" / "model", tmp_path / "cache", settings)
    rows = tagger.tag(read_catalog(path).products, catalog.image_root)
    assert [r["id"] for r in rows] == [p.id for p in test]
    required = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["required_keys"]["*"]
    for r in rows[:2]:
        assert r["tags"] and all(any(t.startswith(k + ":") for t in r["tags"]) for k in required)


def test_tuned_image_trunk_is_bundled_and_tags_new_products(shop, tmp_path):
    from multimodal_tags.data.catalog import read_catalog
    from multimodal_tags.inference.batch_tagger import BatchTagger
    from multimodal_tags.models.tagger import Tagger
    from multimodal_tags.train.finetune_image import ImageFinetuneConfig

    cfg = get_preset("tiny")
    cfg.image_encoder, cfg.image_dim, cfg.image_size, cfg.photo_scores = "timm:test_efficientnet@random+colour", 256 + DIM, 48, True
    settings = RunConfig(allow_random_weights=True, log=lambda s: None, progress=False)
    tune = ImageFinetuneConfig(stages=1, epochs=1, batch_size=16)
    train_tagger(shop, tmp_path / "run", cfg, TrainConfig(epochs=1, batch_size=16, seed=1), settings,
                 finetune_image=tune)
    model_dir = tmp_path / "run" / "model"
    spec = json.loads((model_dir / "config.json").read_text())["model"]["image_encoder"]
    assert spec == "timm:test_efficientnet@./image_encoder.safetensors+colour"
    assert (model_dir / "image_encoder.safetensors").exists() and not list((tmp_path / "run").rglob("image-maps-*"))
    loaded = Tagger.load(model_dir)
    assert loaded.cfg.image_encoder.startswith("timm:test_efficientnet@/")
    catalog = read_catalog(shop)
    rows = BatchTagger(model_dir, tmp_path / "cache2", settings).tag(catalog.products[:3], catalog.image_root)
    assert len(rows) == 3 and all(r["modality_weights"]["image"] > 0 for r in rows)
    # only the tail was tuned: the trunk it started from (same seed) differs in conv_head, not in the stem
    from accelerate.utils import set_seed
    from safetensors.torch import load_file
    from multimodal_tags.models.factory import create_image_encoder

    tuned = load_file(str(model_dir / "image_encoder.safetensors"))
    set_seed(tune.seed)
    base = create_image_encoder("timm:test_efficientnet@random").model.state_dict()
    assert torch.equal(tuned["conv_stem.weight"], base["conv_stem.weight"])
    assert not torch.equal(tuned["conv_head.weight"], base["conv_head.weight"])
