"""The training job: catalog + config -> features -> trained Tagger -> evaluation -> run folder.

    result = train_tagger("catalog.jsonl", "runs/r1", get_preset("offline"), TrainConfig())

The run folder holds config.yaml, run.json (versions, git commit, seed), history.json, metrics.json,
predictions for val and test, report.md with plots, and model/ (loadable with Tagger.load).
"""
from __future__ import annotations

import dataclasses
import hashlib
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
from ..eval.predict import (TAG_SOURCES, predict_dataset, prediction_rows, score_rows, tune_decoder_threshold,
                           tune_model_thresholds)
from ..features import encode_and_load, encode_images, encode_text_views, load_views
from ..models.factory import create_image_encoder, create_text_encoder, require_pretrained
from ..models.tagger import Tagger
from ..run_info import write_run_info
from .data import FeatureDataset, LabelSpace, build_label_space
from .finetune_text import FinetuneConfig, finetune_text_encoder
from .loop import fit
from .word_scores import prepare_word_scores

MODALITIES = ("both", "text", "image")


def prepare_features(catalog: Catalog, cfg: ModelConfig, cache_dir: str | Path, precision: str = "auto",
                     allow_random_weights: bool = False, log: Callable[[str], None] = print) -> dict[str, np.ndarray]:
    """Encode what the cache lacks for the config's encoders; return vectors aligned with the catalog."""
    te = ie = None
    if cfg.text_encoder != "none":
        te = create_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length).set_precision(precision)
        require_pretrained(te, allow_random_weights)
        if te.dim != cfg.text_dim:
            raise ValueError(f"text encoder {cfg.text_encoder} gives {te.dim}-d vectors, config says {cfg.text_dim}")
    if cfg.image_encoder != "none":
        ie = create_image_encoder(cfg.image_encoder).set_precision(precision)
        require_pretrained(ie, allow_random_weights)
        if ie.dim != cfg.image_dim:
            raise ValueError(f"image encoder {cfg.image_encoder} gives {ie.dim}-d vectors, config says {cfg.image_dim}")
    with FeatureCache(cache_dir) as cache:
        return encode_and_load(catalog.products, cache, catalog.image_root, te, ie, log=log)


def prepare_views(products, cfg: ModelConfig, tcfg: TrainConfig, cache_dir: str | Path, image_root: Path,
                  precision: str = "auto", log: Callable[[str], None] = print) -> dict[str, np.ndarray]:
    """Encode and load the augmented views the train config asks for ({} when none)."""
    views: dict[str, np.ndarray] = {}
    with FeatureCache(cache_dir) as cache:
        if tcfg.text_views and cfg.text_encoder != "none":
            te = create_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length).set_precision(precision)
            for v in range(tcfg.text_views):
                log("  " + encode_text_views(products, te, cache, v).summary())
            views["text"] = load_views(products, cache, te.cache_key(), "text", tcfg.text_views)
        if tcfg.image_views and cfg.image_encoder != "none":
            ie = create_image_encoder(cfg.image_encoder).set_precision(precision)
            for v in range(tcfg.image_views):
                log("  " + encode_images(products, ie, cache, image_root, progress=False, augment_view=v).summary()
                    + f" (augmented view {v})")
            views["image"] = load_views(products, cache, ie.cache_key(), "image", tcfg.image_views)
    return views


def restrict_modalities(feats: dict[str, np.ndarray], modalities: str) -> dict[str, np.ndarray]:
    """Hide a modality everywhere (text-only / image-only ablations)."""
    if modalities not in MODALITIES:
        raise ValueError(f"modalities {modalities!r} is not one of {', '.join(MODALITIES)}")
    feats = dict(feats)
    if modalities == "text" and "has_image" in feats:
        feats["has_image"] = np.zeros_like(feats["has_image"])
    if modalities == "image" and "has_text" in feats:
        feats["has_text"] = np.zeros_like(feats["has_text"])
    return feats


@dataclass
class SplitData:
    labels: LabelSpace
    train: FeatureDataset
    val: FeatureDataset
    test: FeatureDataset | None


def split_datasets(catalog: Catalog, feats: dict[str, np.ndarray], cfg: ModelConfig,
                   max_train: int | None = None, views_for=None) -> SplitData:
    """Train/val/test datasets; `views_for(train_products)` supplies augmented train views."""
    idx = {s: [i for i, p in enumerate(catalog.products) if p.split == s] for s in ("train", "val", "test")}
    if not idx["train"] or not idx["val"]:
        raise ValueError(f"the catalog needs train and val products (has {len(idx['train'])} train, "
                         f"{len(idx['val'])} val)")
    if max_train:
        idx["train"] = idx["train"][:max_train]
    labels = build_label_space([catalog.products[i] for i in idx["train"]], catalog.meta.get("tag_vocab"), cfg)

    def ds(ids, views=None):
        return FeatureDataset([catalog.products[i] for i in ids], {k: v[ids] for k, v in feats.items()}, labels, cfg,
                              views)

    train_views = views_for([catalog.products[i] for i in idx["train"]]) if views_for else None
    return SplitData(labels, ds(idx["train"], train_views), ds(idx["val"]),
                     ds(idx["test"]) if idx["test"] else None)


def evaluate_split(model: Tagger, data: FeatureDataset, model_id: str, generate: bool = True,
                   preds: list[dict] | None = None) -> tuple[dict, dict]:
    """Metrics per tag source and prediction rows per tag source for one split (`preds`: already made)."""
    preds = preds if preds is not None else predict_dataset(model, data, generate=generate)
    sources = TAG_SOURCES if (generate and model.decoder is not None) else ("head",)
    rows = {s: prediction_rows(data.products, preds, s, model_id) for s in sources}
    return {s: score_rows(data.products, r) for s, r in rows.items()}, rows


def _finetune_key(spec: str, train: list, ft: FinetuneConfig) -> str:
    """What a fine-tuned encoder depends on: the base encoder, its settings and the train texts and labels."""
    h = hashlib.sha256(json.dumps([spec, dataclasses.asdict(ft)], sort_keys=True).encode())
    for p in train:
        h.update(f"{p.text_hash}|{p.category}|{'|'.join(sorted(p.tags))}\n".encode())
    return h.hexdigest()[:24]


def _finetuned_config(catalog: Catalog, cfg: ModelConfig, ft: FinetuneConfig, folder: Path,
                      max_train: int | None, log: Callable[[str], None]) -> ModelConfig:
    """Fine-tune the config's text encoder (unless `folder` already holds the result for the same
    encoder, settings and train split) and point the config at it."""
    train = [p for p in catalog.products if p.split == "train"][:max_train or None]
    key = _finetune_key(cfg.text_encoder, train, ft)
    marker = folder / "finetune_key.txt"
    if (folder / "config.json").exists() and marker.exists() and marker.read_text().strip() == key:
        log(f"reusing the fine-tuned text encoder in {folder}")
    else:
        if (folder / "config.json").exists():
            log(f"{folder} was fine-tuned on other texts or settings: fine-tuning again")
        categories = sorted({p.category for p in train if p.category})
        tags = catalog.meta.get("tag_vocab") or sorted({t for p in train for t in p.tags})
        log(f"fine-tuning {cfg.text_encoder} on {len(train)} train products")
        finetune_text_encoder(cfg.text_encoder, train, categories, tags, folder, ft, log)
        marker.write_text(key + "\n", encoding="utf-8")
    return dataclasses.replace(cfg, text_encoder=f"hf:{folder.resolve()}", text_max_length=ft.max_length)


def _bundle_text_encoder(encoder_dir: Path, model_dir: Path) -> None:
    """Copy a fine-tuned encoder into the model folder and point the config at it (relative path)."""
    import shutil

    shutil.copytree(encoder_dir, model_dir / "text_encoder", dirs_exist_ok=True)
    cfg_path = model_dir / "config.json"
    meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    meta["model"]["text_encoder"] = "hf:./text_encoder"
    cfg_path.write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")


def train_tagger(catalog_path: str | Path, run_dir: str | Path, cfg: ModelConfig, tcfg: TrainConfig,
                 cache_dir: str | Path | None = None, resume: bool = False, modalities: str = "both",
                 allow_random_weights: bool = False, precision: str = "auto",
                 log: Callable[[str], None] = print, stop_after_epoch: int | None = None,
                 finetune: FinetuneConfig | None = None) -> dict:
    """Train and evaluate one model; returns {"metrics": {split: {source: ...}}, "state": trainer state}.

    With `finetune`, the text encoder is first fine-tuned end to end on the train split (saved in
    `run_dir/text_encoder/`, reused on --resume), and the heads then train on its features."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    catalog = read_catalog(catalog_path)
    log(catalog.report.summary())
    if finetune is not None:
        cfg = _finetuned_config(catalog, cfg, finetune, run_dir / "text_encoder", tcfg.max_train_products, log)
    save_yaml(run_dir / "config.yaml", model=cfg, train=tcfg, finetune=finetune or {})
    cache_dir = Path(cache_dir or Path(catalog_path).resolve().parent / "features-cache")
    log(f"features ({cache_dir})")
    with PartialState().main_process_first():  # under `accelerate launch`, one process fills the cache
        feats = prepare_features(catalog, cfg, cache_dir, precision, allow_random_weights, log)
    feats = restrict_modalities(feats, modalities)
    with PartialState().main_process_first():
        data = split_datasets(catalog, feats, cfg, tcfg.max_train_products,
                              views_for=lambda train: prepare_views(train, cfg, tcfg, cache_dir, catalog.image_root,
                                                                    precision, log))
    log(f"train {len(data.train)}, val {len(data.val)}, test {len(data.test) if data.test else 0}; "
        f"{len(data.labels.categories)} categories, {len(data.labels.tags)} tags")
    set_seed(tcfg.seed)  # the initial weights depend on the seed alone, not on what ran before in this process
    model = Tagger(cfg, data.labels.categories, data.labels.tags, data.labels.tokenizer, data.labels.adversary_classes)
    if model.lexical is not None:
        model.lexical.fit_idf(data.train.lexical_ids)
    with PartialState().main_process_first():  # one process fits (or reads) the word-score SVMs
        prepare_word_scores(model, data.train, tcfg, cache_dir, log)
    state = fit(model, data.train, data.val, tcfg, run_dir, resume=resume, log=log, stop_after_epoch=stop_after_epoch)
    if stop_after_epoch is not None and state["epoch"] < tcfg.epochs - 1 and state["bad_epochs"] < tcfg.patience:
        return {"state": state, "metrics": None}
    if not PartialState().is_main_process:  # under `accelerate launch`, one process evaluates and writes
        return {"state": state, "metrics": None}
    best = Tagger.load(run_dir / "best_model")
    tune_model_thresholds(best, data.val)
    val_preds = predict_dataset(best, data.val)  # generated once: tunes the decoder threshold, then scored
    if best.decoder is not None:
        log(f"decoder threshold {tune_decoder_threshold(best, val_preds, data.val.products):.2f} (tuned on val)")
    best.save(run_dir / "model")
    if finetune is not None:  # the model folder carries its fine-tuned text encoder: it stays self-contained
        _bundle_text_encoder(run_dir / "text_encoder", run_dir / "model")
    model_id = f"{run_dir.name}@epoch{state['best_epoch']}"
    metrics = {}
    for split, ds in (("val", data.val), ("test", data.test)):
        if ds is None:
            continue
        metrics[split], rows = evaluate_split(best, ds, model_id, preds=val_preds if split == "val" else None)
        for source, r in rows.items():
            with open(run_dir / f"{split}_predictions_{source}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in r)
    main_source = "decoder" if best.decoder is not None else "head"
    for split in metrics:
        src = run_dir / f"{split}_predictions_{main_source}.jsonl"
        (run_dir / f"{split}_predictions.jsonl").write_bytes(src.read_bytes())
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    write_run_info(run_dir, {"job": "train", "catalog": str(catalog_path), "modalities": modalities,
                             "seed": tcfg.seed, "best_epoch": state["best_epoch"], "cache": str(cache_dir),
                             "seconds": round(time.perf_counter() - t_start, 1)})
    from ..eval.report import write_report

    write_report(run_dir, metrics, state, best, data.val)
    return {"state": state, "metrics": metrics}
