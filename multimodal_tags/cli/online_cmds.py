"""Commands of the online loop: refresh, feedback, interactions, adapt, tags, recommend, serve."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..tagging.tag_store import check_store
from .common import (EXIT_FAILED, add_model_on_catalog, add_reads_features, add_tag_source, no_products,
                     report_import, run_settings)


def cmd_refresh(a: argparse.Namespace) -> int:
    from ..tagging.refresh import refresh
    from ..tagging.tag_job import TagConfig

    stats = refresh(a.model, a.catalog, a.store, run_settings(a), TagConfig(a.batch_size, a.tag_source))
    print(stats.summary() + f" in {stats.seconds:.1f}s")
    return 0 if stats.kept else no_products(a.catalog)



def cmd_feedback_import(a: argparse.Namespace) -> int:
    from ..feedback.feedback_store import FeedbackStore, import_events
    from ..personal.profiles import Profiles, sync_feedback

    check_store(a.store, a.create)
    result = import_events(a.store, a.events)
    with FeedbackStore(a.store) as fb:  # the judges' profiles follow their judgements
        sync_feedback(Profiles(fb.tags))
    return report_import(result, a.events, result.summary())



def cmd_interactions_import(a: argparse.Namespace) -> int:
    from ..personal.profiles import import_interactions

    check_store(a.store, a.create)
    result = import_interactions(a.store, a.interactions)
    return report_import(result, a.interactions, result.summary().replace("stored", "counted"))



def cmd_feedback_stats(a: argparse.Namespace) -> int:
    from ..feedback.feedback_store import FeedbackStore

    with FeedbackStore(check_store(a.store)) as fb:
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
    from ..feedback.adapt import AdaptConfig, adapt_model

    head_lrs = AdaptConfig().head_lrs if a.head_lr is None else (a.head_lr,)
    options = AdaptConfig(catalog=a.catalog, replay=a.replay, epochs=a.epochs, lr=a.lr, head_lrs=head_lrs,
                          holdout=a.holdout, tolerance=a.tolerance, promote=a.promote, tag_source=a.tag_source,
                          train_fusion=a.train_fusion)
    lineage = adapt_model(a.model, check_store(a.store), a.out, run_settings(a), options)
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
    from ..personal.profiles import Profiles, ranked_tags
    from ..tagging.tag_store import TagStore

    with TagStore(check_store(a.store)) as store:
        row = store.get(a.product)
        if row is None:
            print(f"error: unknown product {a.product!r} in {a.store}", file=sys.stderr)
            return EXIT_FAILED
        for tag in ranked_tags(row, Profiles(store), a.user):
            print(f"{tag}\t{row['tags'][tag]['score']:.3f}")
    return 0



def cmd_recommend(a: argparse.Namespace) -> int:
    from ..personal.profiles import Profiles, recommend
    from ..tagging.tag_store import TagStore

    with TagStore(check_store(a.store)) as store:
        for item in recommend(store, Profiles(store), a.user, a.k):
            print(f"{item['id']}\t{item['score']:.4f}")
    return 0



def cmd_serve(a: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from ..service.app import create_app
    from ..service.auth import KeyRing
    from ..service.limits import RateLimiter, uvicorn_limits
    from ..service.runtime import ServiceConfig

    check_store(a.store, a.create)  # refused before the model loads, as a bad key file is
    if a.threads < 1:
        raise ValueError(f"--threads {a.threads}: at least 1")
    keys = KeyRing.from_file(a.api_key_file) if a.api_key_file else None
    if keys is None and not a.open:
        if a.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"--host {a.host}: a service reachable from other machines needs --api-key-file "
                             "(or --open to serve every route to anyone)")
        print("no --api-key-file: every route is open to this machine's users", file=sys.stderr)
    settings = run_settings(a)
    settings.progress = False
    cfg = ServiceConfig(Path(a.model), Path(a.store), Path(a.cache or Path(a.store).resolve().parent / "features-cache"),
                        image_root=Path(a.image_root) if a.image_root else None, keys=keys,
                        max_body_bytes=int(a.max_body_mb * 2 ** 20), max_batch=a.max_batch,
                        refit_every=a.refit_every, refit_interval_s=a.refit_interval, tag_source=a.tag_source,
                        future_tolerance_s=a.future_tolerance, body_timeout_s=a.body_timeout,
                        limiter=RateLimiter(a.rate_limit) if a.rate_limit else None,
                        settings=settings)
    # One thread for the model by default: with more, its forward passes take every core from the event
    # loop and the store, and feedback waits behind them (docs/results.md, the mixed load).
    torch.set_num_threads(a.threads)
    # bounded connections (production: docs/guide.md, the service behind a proxy)
    uvicorn.run(create_app(cfg), host=a.host, port=a.port, log_level="warning",
                **uvicorn_limits(a.keep_alive, a.max_connections))
    return 0



def _add_refresh(sub) -> None:
    from ..tagging.tag_job import TAG_BATCH_SIZE

    sp = sub.add_parser("refresh", help="re-tag only new/changed products (and all when the model changed)")
    add_model_on_catalog(sp)
    sp.add_argument("--store", required=True)
    sp.add_argument("--batch-size", type=int, default=TAG_BATCH_SIZE)
    add_tag_source(sp)
    add_reads_features(sp)
    sp.set_defaults(func=cmd_refresh)


def _add_feedback(sub) -> None:
    fb = sub.add_parser("feedback", help="tag feedback: import events, acceptance statistics")
    fsub = fb.add_subparsers(dest="feedback_command", required=True)
    sp = fsub.add_parser("import", help="store the events of a JSONL file (accept | reject | add)")
    sp.add_argument("events")
    sp.add_argument("--store", required=True, help="the SQLite tag store (feedback is kept beside the tags)")
    sp.add_argument("--create", action="store_true", help="make the store when --store does not exist "
                    "(without it a mistyped path is refused)")
    sp.set_defaults(func=cmd_feedback_import)
    sp = fsub.add_parser("stats", help="acceptance rate of proposed tags: overall, per tag key, over time")
    sp.add_argument("--store", required=True)
    sp.add_argument("--bucket-hours", type=float, default=24.0)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_feedback_stats)


def _add_interactions(sub) -> None:
    sp = sub.add_parser("interactions", help="purchases and clicks, counted in users' profiles")
    isub = sp.add_subparsers(dest="interactions_command", required=True)
    sp = isub.add_parser("import", help="count the purchases and clicks of a JSONL file (event_id, user, product, "
                                        "kind, time)")
    sp.add_argument("interactions")
    sp.add_argument("--store", required=True)
    sp.add_argument("--create", action="store_true", help="make the store when --store does not exist "
                    "(without it a mistyped path is refused)")
    sp.set_defaults(func=cmd_interactions_import)


def _add_adapt(sub) -> None:
    sp = sub.add_parser("adapt", help="fine-tune heads and decoder on feedback (+ replay); promote if not worse")
    sp.add_argument("--model", required=True)
    sp.add_argument("--store", required=True)
    sp.add_argument("--out", required=True, help="the new model folder")
    sp.add_argument("--catalog", help="the model's training catalog (default: the one it records)")
    sp.add_argument("--promote", action="store_true", help="serve it from this store if it passes the gate")
    sp.add_argument("--replay", type=float, default=3.0, help="replayed training products per judged product")
    sp.add_argument("--epochs", type=int, default=3)
    sp.add_argument("--lr", type=float, default=5e-5, help="the decoder's learning rate")
    sp.add_argument("--head-lr", type=float, help="the category and tag heads' (default: try 5e-5, 1e-3 and 5e-3 "
                    "and keep the best on the held-back feedback that keeps the original validation split)")
    sp.add_argument("--holdout", type=float, default=0.2, help="fraction of judged products held back for the gate")
    sp.add_argument("--tolerance", type=float, default=0.0, help="extra slack on the gate (F1 difference, accuracy)")
    sp.add_argument("--train-fusion", action="store_true",
                    help="fine-tune the fusion head too (more capacity, more to forget; an LM decoder is not carried)")
    add_tag_source(sp)
    add_reads_features(sp)
    sp.set_defaults(func=cmd_adapt)


def _add_tags(sub) -> None:
    sp = sub.add_parser("tags", help="a product's stored tags, in the order of a user's profile")
    sp.add_argument("product")
    sp.add_argument("--store", required=True)
    sp.add_argument("--user", help="whose profile orders the tags (default or unknown: the global order)")
    sp.set_defaults(func=cmd_tags)


def _add_recommend(sub) -> None:
    sp = sub.add_parser("recommend", help="the stored products that best match a user's profile")
    sp.add_argument("--store", required=True)
    sp.add_argument("--user", required=True)
    sp.add_argument("--k", type=int, default=10)
    sp.set_defaults(func=cmd_recommend)


def _add_serve(sub) -> None:
    sp = sub.add_parser("serve", help="the HTTP service: tag, feedback, stored tags, statistics")
    sp.add_argument("--model", required=True)
    sp.add_argument("--store", required=True)
    sp.add_argument("--create", action="store_true", help="make the store when --store does not exist "
                    "(without it a mistyped path is refused)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--image-root", help="folder that photo paths in /tag requests resolve in")
    sp.add_argument("--api-key-file", help="named API keys with scopes, one client per line: `name scopes key` "
                    "(format: multimodal_tags/service/auth.py); every route but /health then needs a key")
    sp.add_argument("--open", action="store_true", help="serve without keys on a non-loopback --host (on purpose)")
    sp.add_argument("--max-connections", type=int, default=256, help="connections served at once (more: 503)")
    sp.add_argument("--rate-limit", type=float, default=0.0,
                    help="requests a second per API key (per address without keys), bursts of twice that; "
                         "over it: 429 (0: no limit)")
    sp.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle connection is kept open")
    sp.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds to wait for the next part of a request body (slower: 408)")
    sp.add_argument("--future-tolerance", type=float, default=300.0,
                    help="seconds an event's time may be ahead of the server's clock (further: refused)")
    sp.add_argument("--max-body-mb", type=float, default=16.0)
    sp.add_argument("--max-batch", type=int, default=32, help="products per forward pass")
    sp.add_argument("--threads", type=int, default=1,
                    help="the model's compute threads (the rest of the cores stay with the event loop and the store)")
    sp.add_argument("--refit-every", type=int, default=200, help="feedback events between calibration re-fits")
    sp.add_argument("--refit-interval", type=float, default=30.0, help="seconds at least between two re-fits")
    add_tag_source(sp)
    add_reads_features(sp)
    sp.set_defaults(func=cmd_serve)


def add_parsers(sub) -> None:
    """Register this group's commands on the `mmtags` subparsers."""
    for add in (_add_refresh, _add_feedback, _add_interactions, _add_adapt, _add_tags, _add_recommend, _add_serve):
        add(sub)
