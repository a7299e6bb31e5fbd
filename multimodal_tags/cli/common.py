"""What the command groups share: exit codes, messages, run settings and argument groups."""
from __future__ import annotations

import argparse
import sys

from ..config import COMPILE_MODES

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130  # 130: killed by SIGINT, as shells report it


def print_issues(report, rejects_hint: str = "") -> None:
    from ..data.catalog import MAX_ISSUES_SHOWN

    for issue in report.issues[:MAX_ISSUES_SHOWN]:
        print(f"  {issue}", file=sys.stderr)
    if len(report.issues) > MAX_ISSUES_SHOWN:
        print(f"  ... {len(report.issues) - MAX_ISSUES_SHOWN} more issues{rejects_hint}", file=sys.stderr)


def no_products(source: str) -> int:
    """Every command treats a catalog with no valid product as a failure, and says so."""
    print(f"error: no valid products in {source} (the issues above, and the rejects file, say why)", file=sys.stderr)
    return EXIT_FAILED


def run_settings(a: argparse.Namespace):
    """The run settings every feature-reading command shares, from its arguments."""
    from ..features.settings import RunConfig

    return RunConfig(cache_dir=getattr(a, "cache", None), allow_random_weights=a.allow_random_weights,
                     progress=not getattr(a, "quiet", False), precision=getattr(a, "precision", "auto"),
                     device=getattr(a, "device", None), decoding=getattr(a, "decoding", "auto"),
                     compile=getattr(a, "compile", "auto"))


def report_import(result, path: str, summary: str) -> int:
    """Print an import's summary and its refused rows (path:row: reason); fails when nothing was taken."""
    from ..data.catalog import MAX_ISSUES_SHOWN

    print(summary)
    for row, reason in result.refused[:MAX_ISSUES_SHOWN]:
        print(f"  {path}:{row}: {reason}", file=sys.stderr)
    if len(result.refused) > MAX_ISSUES_SHOWN:
        print(f"  ... {len(result.refused) - MAX_ISSUES_SHOWN} more refused rows", file=sys.stderr)
    return 0 if result.stored or result.duplicates or not result.refused else EXIT_FAILED


def add_tag_source(sp) -> None:
    from ..inference.rows import DEFAULT_TAG_SOURCE

    sp.add_argument("--tag-source", default=DEFAULT_TAG_SOURCE,
                    help="auto (the GPT-2 decoder's tags when the model has a decoder, else the tag head's), "
                         "decoder, head or both")


def add_model_on_catalog(sp) -> None:
    sp.add_argument("--model", required=True, help="a model folder (RUN_DIR/model)")
    sp.add_argument("--catalog", required=True)


def add_reads_features(sp) -> None:
    sp.add_argument("--cache", help="feature cache folder (default: features-cache beside the catalog)")
    sp.add_argument("--allow-random-weights", action="store_true", help="accept tiny-*/@random encoders")
    sp.add_argument("--precision", default="auto",
                    help="encoders' inference precision (part of the cache key): auto (bf16 where the hardware "
                         "has it, else fp32), fp32, bf16, fp16, or int8 (the text encoder through ONNX Runtime "
                         "on a CPU, the onnx extra; photos as auto)")
    add_compile(sp)


def add_compile(sp) -> None:
    sp.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                    help="run the encoders through torch.compile, faster after 10-30 s of compiling each: auto "
                         "(on a CPU, for jobs of 50,000 products or more), on, or off")


def add_image_checks(sp) -> None:
    sp.add_argument("--image-root", help="folder image paths resolve in (default: the catalog's meta, "
                                         "else its folder)")
    sp.add_argument("--no-image-check", action="store_true", help="do not open every photo while validating")
    sp.add_argument("--strict-images", action="store_true",
                    help="reject a row whose photo is unusable (default: keep it text-only, with a warning)")
