"""The training job: catalog + config -> features -> trained Tagger -> evaluation -> run folder.

    result = train_tagger("catalog.jsonl", "runs/r1", get_preset("offline"), TrainConfig())

Each step is a function of its own: read the catalog (and fine-tune the text encoder, on the slow
path), get features, split, build the model (IDF, word scores), fit, tune thresholds and save, score
val and test, write the report. The run folder holds config.yaml, run.json (versions, git commit,
seed), history.json, metrics.json, predictions for val and test, report.md with plots, and model/
(loadable with Tagger.load).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accelerate import PartialState
from accelerate.utils import set_seed

from ..config import ModelConfig, TrainConfig, save_yaml
from ..data.catalog import Catalog, read_catalog
from ..data.feature_cache import FeatureCache
from ..features.catalog_features import encode_catalog
from ..features.encode import encode_images, encode_text_views, load_views
from ..features.settings import RunConfig
from ..features.source import FeatureSource
from ..inference.predict import predict_source
from ..inference.scoring import score_split
from ..inference.thresholds import tune_decoder_threshold, tune_head_thresholds
from ..models.tagger import Tagger
from ..files import write_json_atomic
from ..run_info import LINEAGE_FILE, StageClock, write_run_info
from .data import FeatureDataset, LabelSpace, build_label_space
from .finetune_image import ImageFinetuneConfig, bundle_image_encoder, finetuned_image_config
from .finetune_text import FinetuneConfig, bundle_text_encoder, finetuned_config
from .loop import fit
from .masked_copies import masked_copies
from .report import write_report
from .fit_word_scores import prepare_word_scores

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    labels: LabelSpace
    train: FeatureDataset
    val: FeatureDataset
    test: FeatureDataset | None


def split_indices(catalog: Catalog, max_train: int | None = None) -> dict[str, list[int]]:
    """Catalog positions of each split's products (train cut to `max_train`); train and val must exist."""
    idx = {s: [i for i, p in enumerate(catalog.products) if p.split == s] for s in SPLITS}
    if not idx["train"] or not idx["val"]:
        raise ValueError(f"the catalog needs train and val products (has {len(idx['train'])} train, "
                         f"{len(idx['val'])} val)")
    if max_train:
        idx["train"] = idx["train"][:max_train]
    return idx


def split_datasets(catalog: Catalog, source: FeatureSource, cfg: ModelConfig, max_train: int | None = None,
                   views_for=None, copies_for=None) -> SplitData:
    """Train/val/test datasets over the catalog's features; `views_for(train_products)` supplies
    augmented train views, `copies_for(train_source)` masked copies (see `copies_maker`)."""
    idx = split_indices(catalog, max_train)
    labels = build_label_space([catalog.products[i] for i in idx["train"]], catalog.meta.get("tag_vocab"), cfg)
    train_views = views_for([catalog.products[i] for i in idx["train"]]) if views_for else None
    train_source, copy_of = source.subset(idx["train"]), None
    if copies_for is not None:
        train_source, copy_of = copies_for(train_source)
    train = FeatureDataset(train_source, labels, cfg, train_views, copy_of)
    val = FeatureDataset(source.subset(idx["val"]), labels, cfg)
    test = FeatureDataset(source.subset(idx["test"]), labels, cfg) if idx["test"] else None
    return SplitData(labels, train, val, test)


def prepare_views(products, cfg: ModelConfig, tcfg: TrainConfig, cache_dir: str | Path, image_root: Path,
                  settings: RunConfig) -> dict[str, np.ndarray]:
    """Encode and load the augmented views the train config asks for ({} when none)."""
    views: dict[str, np.ndarray] = {}
    encoders = settings.encoders_for(cfg)
    with FeatureCache(cache_dir) as cache:
        if tcfg.text_views and encoders.text is not None:
            for v in range(tcfg.text_views):
                settings.log("  " + encode_text_views(products, encoders.text, cache, v).summary())
            views["text"] = load_views(products, cache, encoders.text.cache_key(), "text", tcfg.text_views)
        if tcfg.image_views and encoders.image is not None:
            for v in range(tcfg.image_views):
                stats = encode_images(products, encoders.image, cache, image_root, progress=False, augment_view=v)
                settings.log("  " + stats.summary() + f" (augmented view {v})")
            views["image"] = load_views(products, cache, encoders.image.cache_key(), "image", tcfg.image_views)
    return views


# What rebuilding the train split exactly as training built it takes (feedback/adapt.py replays it, and
# finds the word-score cross-fitting in the cache only when the split, its masked copies and the SVM
# settings are the same): recorded in the model folder's lineage.json.
REPLAY_SETTINGS = ("seed", "max_train_products", "masked_copies", "masked_view", "word_score_folds", "word_score_c",
                   "word_score_tol", "word_score_final")


def replay_settings(tcfg: TrainConfig) -> dict:
    """The train settings of REPLAY_SETTINGS, as lineage.json records them."""
    return {k: getattr(tcfg, k) for k in REPLAY_SETTINGS}


def copies_maker(catalog: Catalog, cfg: ModelConfig, tcfg: TrainConfig, cache_dir: Path, settings: RunConfig):
    """The `copies_for` of `split_datasets` that the train config asks for (None: no masked copies)."""
    if tcfg.masked_copies <= 0:
        return None
    return lambda train: masked_copies(train, tcfg.masked_copies, tcfg.seed, settings.encoders_for(cfg), cache_dir,
                                       catalog.image_root, cfg, settings.log, view=tcfg.masked_view)


def prepare_data(catalog: Catalog, cfg: ModelConfig, tcfg: TrainConfig, cache_dir: Path, settings: RunConfig,
                 modalities: str = "both") -> SplitData:
    """Features of the whole catalog (one process encodes under `accelerate launch`), split."""
    settings.log(f"features ({cache_dir})")
    with PartialState().main_process_first():  # under `accelerate launch`, one process fills the cache
        source = encode_catalog(catalog, cfg, cache_dir, settings).hide(modalities)
    with PartialState().main_process_first():
        data = split_datasets(catalog, source, cfg, tcfg.max_train_products,
                              views_for=lambda train: prepare_views(train, cfg, tcfg, cache_dir, catalog.image_root,
                                                                    settings),
                              copies_for=copies_maker(catalog, cfg, tcfg, cache_dir, settings))
    settings.log(f"train {len(data.train)}, val {len(data.val)}, test {len(data.test) if data.test else 0}; "
                 f"{len(data.labels.categories)} categories, {len(data.labels.tags)} tags")
    return data


def build_model(cfg: ModelConfig, tcfg: TrainConfig, data: SplitData, cache_dir: Path,
                log: Callable[[str], None]) -> Tagger:
    """A fresh Tagger for the label space, its IDF fitted and its word-score SVMs fitted (or read)."""
    set_seed(tcfg.seed)  # the initial weights depend on the seed alone, not on what ran before in this process
    labels = data.labels
    model = Tagger(cfg, labels.categories, labels.tags, labels.tokenizer, labels.adversary_classes, labels.required,
                   labels.required_exempt)
    if model.lexical is not None:
        model.lexical.fit_idf(data.train.lexical_ids[:data.train.n_original])  # as the SVMs: originals only
    with PartialState().main_process_first():  # one process fits (or reads) the word-score SVMs
        prepare_word_scores(model, data.train, tcfg, cache_dir, log)
    return model


def finish_model(run_dir: Path, val: FeatureDataset, log: Callable[[str], None]) -> tuple[Tagger, list[dict]]:
    """Load the best epoch's model, tune its thresholds on val and save it to run_dir/model; returns it
    and its val predictions (made once: they tune the decoder threshold, then are scored)."""
    best = Tagger.load(run_dir / "best_model")
    tune_head_thresholds(best, val.features)
    val_preds = predict_source(best, val.features)
    if best.decoder is not None:
        log(f"decoder threshold {tune_decoder_threshold(best, val_preds, val.products):.2f} (tuned on val)")
    best.save(run_dir / "model")
    return best, val_preds


def write_predictions(run_dir: Path, split: str, rows: dict[str, list[dict]], main_source: str) -> None:
    """One JSONL per tag source, and `{split}_predictions.jsonl` for the main one."""
    for source, r in rows.items():
        with open(run_dir / f"{split}_predictions_{source}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in r)
    src = run_dir / f"{split}_predictions_{main_source}.jsonl"
    (run_dir / f"{split}_predictions.jsonl").write_bytes(src.read_bytes())


def score_and_write(best: Tagger, data: SplitData, run_dir: Path, model_id: str, val_preds: list[dict]) -> dict:
    """Metrics of val and test per tag source, with their prediction files written."""
    main_source = "decoder" if best.decoder is not None else "head"
    metrics = {}
    for split, ds in (("val", data.val), ("test", data.test)):
        if ds is not None:
            metrics[split], rows = score_split(best, ds.features, model_id, val_preds if split == "val" else None)
            write_predictions(run_dir, split, rows, main_source)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics


def tuned_config(catalog: Catalog, cfg: ModelConfig, run_dir: Path, max_train: int | None,
                 log: Callable[[str], None], finetune: FinetuneConfig | None = None,
                 finetune_image: ImageFinetuneConfig | None = None) -> ModelConfig:
    """The config once its encoders are tuned as asked (tuned into `run_dir/text_encoder/` and
    `run_dir/image_encoder/`, or found there already tuned for the same settings and train split)."""
    if finetune is not None:
        cfg = finetuned_config(catalog, cfg, finetune, run_dir / "text_encoder", max_train, log)
    if finetune_image is not None:
        cfg = finetuned_image_config(catalog, cfg, finetune_image, run_dir / "image_encoder", max_train, log)
    return cfg


def train_tagger(catalog_path: str | Path, run_dir: str | Path, cfg: ModelConfig, tcfg: TrainConfig,
                 settings: RunConfig | None = None, resume: bool = False, modalities: str = "both",
                 finetune: FinetuneConfig | None = None, stop_after_epoch: int | None = None,
                 finetune_image: ImageFinetuneConfig | None = None) -> dict:
    """Train and evaluate one model; returns {"metrics": {split: {source: ...}}, "state": trainer state}.

    With `finetune`, the text encoder is first fine-tuned end to end on the train split (saved in
    `run_dir/text_encoder/`, reused on --resume), and the heads then train on its features; with
    `finetune_image`, the last stages of the image trunk likewise (`run_dir/image_encoder/`)."""
    settings, run_dir, t_start = settings or RunConfig(), Path(run_dir), time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    clock = StageClock()  # stage times: run.json and the result's "stages"
    catalog = read_catalog(catalog_path)
    settings.log(catalog.report.summary())
    with clock("text encoder fine-tuning"):
        cfg = tuned_config(catalog, cfg, run_dir, tcfg.max_train_products, settings.log, finetune)
    with clock("image trunk fine-tuning"):
        cfg = tuned_config(catalog, cfg, run_dir, tcfg.max_train_products, settings.log, None, finetune_image)
    # what ran, as a recipe (train/recipe.py) with the tuned encoders' folders as the model's encoders
    tuning = {k: v for k, v in (("finetune_text", finetune), ("finetune_image", finetune_image)) if v is not None}
    save_yaml(run_dir / "config.yaml", model=cfg, train=tcfg, **tuning)
    cache_dir = settings.cache_for(catalog_path)
    with clock("features (text, photos, masked copies)"):
        data = prepare_data(catalog, cfg, tcfg, cache_dir, settings, modalities)
    with clock("word-score SVMs"):
        model = build_model(cfg, tcfg, data, cache_dir, settings.log)
    with clock("training epochs"):
        state = fit(model, data.train, data.val, tcfg, run_dir, resume=resume, log=settings.log,
                    stop_after_epoch=stop_after_epoch)
    stopped = stop_after_epoch is not None and state["epoch"] < tcfg.epochs - 1 and state["bad_epochs"] < tcfg.patience
    if stopped or not PartialState().is_main_process:  # under `accelerate launch`, one process evaluates
        return {"state": state, "metrics": None}
    with clock("thresholds and evaluation"):
        best, val_preds = finish_model(run_dir, data.val, settings.log)
        if finetune is not None:  # the model folder carries its fine-tuned text encoder: it stays self-contained
            bundle_text_encoder(run_dir / "text_encoder", run_dir / "model")
        if finetune_image is not None:
            bundle_image_encoder(run_dir / "image_encoder", run_dir / "model")
        write_json_atomic(run_dir / "model" / LINEAGE_FILE, {"catalog": str(Path(catalog_path).resolve()),
                                                             "parent": None, "train": replay_settings(tcfg)})
        metrics = score_and_write(best, data, run_dir, f"{run_dir.name}@epoch{state['best_epoch']}", val_preds)
    write_run_info(run_dir, {"job": "train", "catalog": str(catalog_path), "modalities": modalities,
                             "seed": tcfg.seed, "best_epoch": state["best_epoch"], "cache": str(cache_dir),
                             "seconds": round(time.perf_counter() - t_start, 1), "stages": clock.seconds})
    write_report(run_dir, metrics, state, data.val.products)
    return {"state": state, "metrics": metrics, "stages": clock.seconds}
