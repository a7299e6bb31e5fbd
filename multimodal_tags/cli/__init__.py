"""`mmtags`: the command line. Thin: parses arguments, calls the library, turns errors into messages.

Each command group lives in its own module (`catalog_cmds`, `model_cmds`, `online_cmds`) with the
functions that run its commands and an `add_parsers(sub)` that declares their arguments.
"""
from __future__ import annotations

import argparse
import sys

from . import catalog_cmds, model_cmds, online_cmds
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """The `mmtags` argument parser, every command group registered."""
    p = argparse.ArgumentParser(prog="mmtags", description="Tag e-commerce products from their text and photos.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (catalog_cmds, model_cmds, online_cmds):
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mmtags`; returns the exit code. Expected failures print one message, no traceback."""
    from ..models.encoder_base import WeightsUnavailable
    from ..models.tagger import IncompatibleModel
    from ..models.zero_shot import ZeroShotUnavailable

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
