"""Commands on catalogs and the feature cache: import, validate, features, encoders, presets, cache."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import add_compile, add_image_checks, no_products, print_issues


def cmd_import(a: argparse.Namespace) -> int:
    from ..data.importers import get_importer, run_import
    from ..data.validate import Limits

    source = get_importer(a.source)(a.data, mapping=a.map, tag_columns=a.tag_columns or "",
                                    image_root=a.image_root)
    if a.min_tag_count is not None:
        source.min_tag_count = a.min_tag_count
    t0 = time.perf_counter()
    result = run_import(source, a.out, Limits(check_images=not a.no_image_check, strict_images=a.strict_images))
    print(result.report.summary())
    print_issues(result.report, f" (all in {a.out}.rejects.jsonl)")
    if not result.products:
        return no_products(a.data)
    print(f"wrote {a.out} ({len(result.products)} products, {len(result.vocab)} tags in the vocabulary, "
          f"min count {source.min_tag_count}) in {time.perf_counter() - t0:.1f}s")
    return 0



def cmd_validate(a: argparse.Namespace) -> int:
    from ..data.catalog import read_catalog, write_rejects
    from ..data.validate import Limits

    catalog = read_catalog(a.catalog, a.image_root, Limits(check_images=not a.no_image_check,
                                                           strict_images=a.strict_images))
    print(catalog.report.summary())
    rejects = Path(a.rejects or f"{a.catalog}.rejects.jsonl")
    if catalog.report.issues:
        write_rejects(catalog.report.issues, rejects)
    print_issues(catalog.report, f" (all in {rejects})")
    if catalog.report.issues:
        print(f"issues written to {rejects}")
    return 0 if catalog.products else no_products(a.catalog)



def _feature_sizes(a: argparse.Namespace) -> tuple[int, int | None]:
    """Text tokens and photo side for `mmtags features`: as given, else what training with the offline preset
    reads (its sizes where its encoders are named, a model config's defaults otherwise)."""
    from ..config import ModelConfig
    from ..models.presets import get_preset

    offline, default = get_preset("offline"), ModelConfig()
    max_length = a.max_length or (offline if a.text_encoder == offline.text_encoder else default).text_max_length
    if a.image_size is not None:
        return max_length, a.image_size or None
    return max_length, (offline if a.image_encoder == offline.image_encoder else default).image_size



def cmd_features(a: argparse.Namespace) -> int:
    from ..data.catalog import MAX_ISSUES_SHOWN, read_catalog
    from ..data.feature_cache import FeatureCache
    from ..data.validate import Limits
    from ..features import EncoderSet, default_cache_dir, encode_images, encode_texts
    from ..models.encoder_base import default_device

    catalog = read_catalog(a.catalog, a.image_root, Limits(check_images=True))
    print(catalog.report.summary())
    print_issues(catalog.report, " (run `mmtags validate` to write them all)")
    if not catalog.products:
        return no_products(a.catalog)
    cache_dir = Path(a.cache) if a.cache else default_cache_dir(a.catalog)
    max_length, image_size = _feature_sizes(a)
    encoders = EncoderSet(a.text_encoder, a.image_encoder, max_length, image_size, a.precision,
                          a.allow_random_weights, device=a.device if a.device != "auto" else default_device(),
                          compile=a.compile)
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



def cmd_encoders(a: argparse.Namespace) -> int:
    from ..models.factory import list_encoders

    for modality, specs in list_encoders().items():
        print(f"{modality}:")
        for spec, desc in specs.items():
            print(f"  {spec:16s} {desc}")
    return 0



def cmd_presets(a: argparse.Namespace) -> int:
    from ..config import to_dict
    from ..models.presets import get_preset, list_presets

    for name in list_presets():
        cfg = get_preset(name)
        print(f"{name:8s} text {cfg.text_encoder}, image {cfg.image_encoder}, fusion {cfg.fusion} {cfg.dim}-d, "
              f"decoder {cfg.tag_decoder} vocabulary, GPT-2 {cfg.decoder.gpt2} "
              f"({cfg.decoder.n_layer}x{cfg.decoder.n_embd} if scratch)")
        if a.verbose:
            print(json.dumps(to_dict(cfg), indent=1))
    return 0



def cmd_cache(a: argparse.Namespace) -> int:
    from ..data.feature_cache import FeatureCache

    with FeatureCache(a.cache) as cache:
        for e in cache.encoders():
            print(json.dumps({k: e[k] for k in ("key", "spec", "dim", "vectors", "weights_id", "precision")}))
    return 0



def _add_import(sub) -> None:
    sp = sub.add_parser("import", help="turn a source format into a validated catalog")
    sp.add_argument("source", help="fashion-myntra, flipkart-1050, product1m-zh or generic")
    sp.add_argument("--data", required=True, help="the source folder (myntra, flipkart, product1m) or file (generic)")
    sp.add_argument("--out", required=True, help="catalog to write (.jsonl, .csv or .parquet)")
    sp.add_argument("--map", help="generic: field=column pairs, e.g. id=sku,title=name,image=photo")
    sp.add_argument("--tag-columns", help="generic: columns that become key:value tags, e.g. colour,material")
    sp.add_argument("--min-tag-count", type=int, help="vocabulary threshold over train products")
    add_image_checks(sp)
    sp.set_defaults(func=cmd_import)


def _add_validate(sub) -> None:
    sp = sub.add_parser("validate", help="check a catalog; report every bad row by file, row and field")
    sp.add_argument("--catalog", required=True)
    sp.add_argument("--rejects", help="where to write the issues (default: CATALOG.rejects.jsonl)")
    add_image_checks(sp)
    sp.set_defaults(func=cmd_validate)


def _add_features(sub) -> None:
    from ..models.factory import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER

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
    sp.add_argument("--precision", default="auto",
                    help="auto, fp32, bf16, fp16 or int8 (text through ONNX Runtime; part of the cache key)")
    sp.add_argument("--device", default="auto")
    add_compile(sp)
    sp.add_argument("--allow-random-weights", action="store_true", help="accept tiny-*/@random encoders")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_features)


def _add_encoders(sub) -> None:
    sp = sub.add_parser("encoders", help="list encoder specs")
    sp.set_defaults(func=cmd_encoders)


def _add_presets(sub) -> None:
    sp = sub.add_parser("presets", help="list model presets")
    sp.add_argument("--verbose", action="store_true", help="print each preset's whole config")
    sp.set_defaults(func=cmd_presets)


def _add_cache(sub) -> None:
    sp = sub.add_parser("cache", help="list what a feature cache holds")
    sp.add_argument("--cache", required=True)
    sp.set_defaults(func=cmd_cache)


def add_parsers(sub) -> None:
    """Register this group's commands on the `mmtags` subparsers."""
    for add in (_add_import, _add_validate, _add_features, _add_encoders, _add_presets, _add_cache):
        add(sub)
