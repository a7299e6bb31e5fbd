"""What every run folder records so it can be reproduced: versions, git commit, command, settings."""
from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

LINEAGE_FILE = "lineage.json"  # in a model folder: the catalog it was trained on, its parent model, its feedback


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("multimodal_tags", "torch", "torchvision", "transformers", "open_clip_torch", "timm", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_info(folder: str | Path, settings: dict) -> Path:
    """Write `run.json` into a run folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "git_commit": _git_commit(),
            "versions": versions(), "platform": platform.platform(), "settings": settings}
    path = folder / "run.json"
    path.write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    return path


class StageClock:
    """Seconds spent in each named stage of a job (`with clock("features"): ...`), in the order run."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 1)
