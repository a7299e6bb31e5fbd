"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set before anything imports transformers."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("MMTAGS_DATASETS", REPO.parent / "shared" / "datasets"))


def dataset(name: str) -> Path:
    """Path of a shared data set, or skip the test where it is absent (a user's fresh clone)."""
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def write_jpeg(path: Path, colour=(200, 30, 40), size=(40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else (json.dumps(r, ensure_ascii=False) + "\n").encode())
    return path


@pytest.fixture(scope="session")
def tiny_text():
    from multimodal_tags.models.factory import create_text_encoder

    return create_text_encoder("tiny-bert")


@pytest.fixture(scope="session")
def tiny_image():
    from multimodal_tags.models.factory import create_image_encoder

    return create_image_encoder("tiny-clip")


@pytest.fixture
def small_catalog(tmp_path):
    """Six valid products with photos (two identical photos, two identical texts)."""
    rows = []
    for i in range(6):
        write_jpeg(tmp_path / "img" / f"{i}.jpg", colour=(40 * i, 100, 200 - 30 * (i % 3)))
        rows.append({"id": f"p{i}", "title": f"Product {i % 5}", "description": "cotton shirt" if (i % 5) % 2 else "mug",
                     "image": f"img/{i if i != 5 else 4}.jpg", "category": "shirt" if i % 2 else "mug",
                     "tags": ["colour:red"] if i % 2 else ["material:ceramic"], "split": "train" if i < 4 else "test"})
    return write_jsonl(tmp_path / "catalog.jsonl", rows)


def synthetic_catalog(root: Path, n: int) -> Path:
    """The synthetic demo shop with n products, imported into root/catalog.jsonl."""
    from multimodal_tags.data.importers import generic, run_import
    from multimodal_tags.data.synthetic import SYNTHETIC_MAPPING, SYNTHETIC_TAG_COLUMNS, make_synthetic_export

    export = make_synthetic_export(root / "export", n=n)
    run_import(generic.read(export, mapping=SYNTHETIC_MAPPING, tag_columns=SYNTHETIC_TAG_COLUMNS),
               root / "catalog.jsonl")
    return root / "catalog.jsonl"


from multimodal_tags.config import TrainConfig  # noqa: E402
from multimodal_tags.data.catalog import read_catalog  # noqa: E402
from multimodal_tags.features import RunConfig  # noqa: E402
from multimodal_tags.inference.batch_tagger import BatchTagger  # noqa: E402
from multimodal_tags.models.presets import get_preset  # noqa: E402
from multimodal_tags.tagging.tag_store import TagStore  # noqa: E402
from multimodal_tags.train.job import train_tagger  # noqa: E402

SETTINGS = RunConfig(allow_random_weights=True, progress=False, log=lambda s: None)


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    """A tiny model on a synthetic shop, and a store holding the tags of its val products."""
    root = tmp_path_factory.mktemp("feedback")
    synthetic_catalog(root, 400)
    train_tagger(root / "catalog.jsonl", root / "run", get_preset("tiny"),
                 TrainConfig(epochs=2, batch_size=32, max_train_products=200), SETTINGS)
    catalog = read_catalog(root / "catalog.jsonl")
    val = [p for p in catalog.products if p.split == "val"]
    tagger = BatchTagger(root / "run" / "model", root / "features-cache", SETTINGS)
    with TagStore(root / "tags.db") as store:
        store.write(tagger.tag(val, catalog.image_root), {}, val)
    return {"root": root, "model": root / "run" / "model", "val": val, "image_root": catalog.image_root}


