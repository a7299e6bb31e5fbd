import json

import numpy as np
import pytest

from conftest import write_jpeg
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features import encode_images, encode_texts, load_features


def _encode(path, cache, te, ie):
    catalog = read_catalog(path)
    return (encode_texts(catalog.products, te, cache, batch_size=2, progress=False),
            encode_images(catalog.products, ie, cache, catalog.image_root, batch_size=2, num_workers=0,
                          progress=False), catalog)


def test_second_run_is_a_no_op(small_catalog, tmp_path, tiny_text, tiny_image):
    with FeatureCache(tmp_path / "cache") as cache:
        t, i, _ = _encode(small_catalog, cache, tiny_text, tiny_image)
        assert (t.products, t.unique, t.encoded) == (6, 5, 5)  # two products share a text
        assert (i.products, i.unique, i.encoded) == (6, 5, 5)  # and two share a photo
        t2, i2, catalog = _encode(small_catalog, cache, tiny_text, tiny_image)
        assert (t2.encoded, t2.cached, i2.encoded, i2.cached) == (0, 5, 0, 5)
        feats = load_features(catalog.products, cache, tiny_text.cache_key(), tiny_image.cache_key())
        assert feats["text"].shape == (6, 32) and feats["has_image"].all()
        direct = tiny_text.encode([catalog.products[0].text]).pooled.numpy()[0]
        np.testing.assert_allclose(feats["text"][0], direct, atol=1e-5)


def test_changed_product_reencodes_alone(small_catalog, tmp_path, tiny_text, tiny_image):
    with FeatureCache(tmp_path / "cache") as cache:
        _encode(small_catalog, cache, tiny_text, tiny_image)
        rows = [json.loads(l) for l in small_catalog.read_text().splitlines()]
        rows[2]["title"] = "A brand new title"
        small_catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
        t, i, _ = _encode(small_catalog, cache, tiny_text, tiny_image)
        assert (t.encoded, i.encoded) == (1, 0)
        write_jpeg(small_catalog.parent / "img" / "3.jpg", colour=(1, 2, 3))  # same path, new photo
        t, i, _ = _encode(small_catalog, cache, tiny_text, tiny_image)
        assert (t.encoded, i.encoded) == (0, 1)


def test_interrupted_run_keeps_finished_batches(small_catalog, tmp_path, tiny_text, tiny_image, monkeypatch):
    catalog = read_catalog(small_catalog)
    calls = {"n": 0}
    real = type(tiny_text).encode

    def dies_on_third_batch(self, texts, return_tokens=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, texts, return_tokens)

    with FeatureCache(tmp_path / "cache") as cache:
        monkeypatch.setattr(type(tiny_text), "encode", dies_on_third_batch)
        with pytest.raises(KeyboardInterrupt):
            encode_texts(catalog.products, tiny_text, cache, batch_size=2, progress=False)
        monkeypatch.setattr(type(tiny_text), "encode", real)
        assert cache.count(tiny_text.cache_key()) == 4  # two full batches were committed
        again = encode_texts(catalog.products, tiny_text, cache, batch_size=2, progress=False)
        assert (again.cached, again.encoded) == (4, 1)


def test_unreadable_photo_is_reported_not_fatal(small_catalog, tmp_path, tiny_text, tiny_image):
    catalog = read_catalog(small_catalog)
    (small_catalog.parent / "img" / "0.jpg").write_bytes(b"garbage after validation")
    with FeatureCache(tmp_path / "cache") as cache:
        stats = encode_images(catalog.products, tiny_image, cache, catalog.image_root, num_workers=0, progress=False)
        assert stats.encoded == 4 and [pid for pid, _ in stats.failed] == ["p0"]
        feats = load_features(catalog.products, cache, None, tiny_image.cache_key())
        assert not feats["has_image"][0] and feats["has_image"][1:].all()
        assert not feats["image"][0].any()


def test_cache_survives_reopen_and_describes_encoders(small_catalog, tmp_path, tiny_text, tiny_image):
    with FeatureCache(tmp_path / "cache") as cache:
        _encode(small_catalog, cache, tiny_text, tiny_image)
    with FeatureCache(tmp_path / "cache") as cache:
        listed = {e["spec"]: e for e in cache.encoders()}
        assert listed["tiny-bert"]["vectors"] == 5 and listed["tiny-clip"]["dim"] == 32
        assert listed["tiny-bert"]["random_weights"] is True
        vec, found = cache.get(tiny_text.cache_key(), ["nope", None])
        assert not found.any() and vec.shape == (2, 32)


def test_an_encoder_is_described_once_per_connection_not_per_batch(small_catalog, tmp_path, tiny_text, tiny_image,
                                                                    monkeypatch):
    calls = []
    describe = type(tiny_text).describe
    monkeypatch.setattr(type(tiny_text), "describe", lambda self: calls.append(1) or describe(self))
    with FeatureCache(tmp_path / "cache") as cache:
        _encode(small_catalog, cache, tiny_text, tiny_image)
        _encode(small_catalog, cache, tiny_text, tiny_image)
        assert len(calls) == 1 and cache.registered(tiny_text.cache_key())
    with FeatureCache(tmp_path / "cache") as cache:
        assert not cache.registered(tiny_text.cache_key())  # a new connection records it again (a no-op)
