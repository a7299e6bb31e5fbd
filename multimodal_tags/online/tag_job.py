"""`mmtags tag`: tag a whole catalog, streaming, in bounded memory, resumable after any interruption.

The catalog is read row by row; products go through the model in batches; each batch's lines are
written in one write, flushed and fsynced. A rerun finds the lines already written, drops a trailing
partial line and anything after the last whole batch, skips that many products, and carries on:
the output equals an uninterrupted run's, with no product missing and none twice. Bad rows go to
the rejects file (rewritten on every run, since rows are re-read anyway).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..data.catalog import DiskIdIndex, ReadReport, image_root_for, iter_catalog
from ..data.validate import Limits
from .batch_tagger import BatchTagger
from .store import TagStore


@dataclass
class TagStats:
    read: int = 0
    tagged: int = 0
    resumed_after: int = 0  # products found already tagged in the output
    rejected: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        s = f"read {self.read} rows: tagged {self.tagged}, rejected {self.rejected}"
        if self.resumed_after:
            s += f", {self.resumed_after} already done by an earlier run"
        if self.tagged and self.seconds:
            s += f" in {self.seconds:.1f}s ({self.tagged / self.seconds:.1f} products/s)"
        return s


def _resume_point(out: Path, batch_size: int) -> tuple[int, str | None]:
    """Keep only whole batches of complete lines in `out` (truncating the rest); return (lines kept,
    id on the last kept line). Reads line by line: resuming a huge output costs no memory."""
    if not out.exists():
        return 0, None
    complete, offset, keep_offset, last_kept = 0, 0, 0, None
    with open(out, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # a partial line: the interrupted write
            complete += 1
            offset += len(line)
            if complete % batch_size == 0:
                keep_offset, last_kept = offset, line
    with open(out, "r+b") as f:
        f.truncate(keep_offset)
        f.flush()
        os.fsync(f.fileno())
    keep = (complete // batch_size) * batch_size
    return keep, (json.loads(last_kept)["id"] if keep else None)


def tag_catalog(model_dir: str | Path, catalog_path: str | Path, out_path: str | Path,
                store_path: str | Path | None = None, rejects_path: str | Path | None = None,
                batch_size: int = 256, tag_source: str = "both", cache_dir: str | Path | None = None,
                image_root: str | Path | None = None, limits: Limits | None = None, precision: str = "auto",
                allow_random_weights: bool = False, progress: bool = True, extra_tags: list[str] | None = None,
                log: Callable[[str], None] = print) -> TagStats:
    """Tag every valid product of the catalog into `out_path` (JSONL), and into the store if given.
    `extra_tags` are scored zero-shot by CLIP similarity, calibrated on the catalog's val products."""
    catalog_path, out = Path(catalog_path), Path(out_path)
    rejects = Path(rejects_path or f"{out}.rejects.jsonl")
    cache_dir = Path(cache_dir or catalog_path.resolve().parent / "features-cache")
    tagger = BatchTagger(model_dir, cache_dir, tag_source, precision, allow_random_weights)
    root = image_root_for(catalog_path, image_root)
    if extra_tags:
        calibration = []
        for p in iter_catalog(catalog_path, root, limits):
            if p.split == "val":
                calibration.append(p)
                if len(calibration) >= 5000:  # enough to set a threshold; bounded memory
                    break
        tagger.enable_zero_shot(extra_tags, calibration, root, log)
    stats, t0 = TagStats(), time.perf_counter()
    done, last_id = _resume_point(out, batch_size)
    stats.resumed_after = done
    report = ReadReport(str(catalog_path))
    seen = DiskIdIndex()  # duplicate ids are caught without holding every id in memory
    store = TagStore(store_path) if store_path else None
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out, "ab") as f_out, open(rejects, "w", encoding="utf-8") as f_rej, \
                tqdm(desc="tag", unit="product", disable=not progress) as bar:
            good, batch = 0, []

            def flush_batch() -> None:
                rows = tagger.tag(batch, root)
                f_out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
                f_out.flush()
                os.fsync(f_out.fileno())
                if store is not None:
                    store.write(rows, {r["id"]: store.change_kind(r["id"], r["content_hash"], r["model_id"])
                                       for r in rows})
                stats.tagged += len(rows)
                bar.update(len(rows))
                batch.clear()

            for product in iter_catalog(catalog_path, root, limits, report, seen=seen):
                good += 1
                for issue in report.issues:  # stream issues out instead of keeping them
                    f_rej.write(json.dumps(issue.to_dict(), ensure_ascii=False) + "\n")
                report.issues.clear()
                if good <= done:
                    if good == done and product.id != last_id:
                        raise ValueError(f"{out} does not continue this catalog (line {done} is {last_id!r}, the "
                                         f"catalog's product {done} is {product.id!r}); write to a new --out")
                    continue
                batch.append(product)
                if len(batch) == batch_size:
                    flush_batch()
            for issue in report.issues:
                f_rej.write(json.dumps(issue.to_dict(), ensure_ascii=False) + "\n")
            if batch:
                flush_batch()
    finally:
        seen.close()
        if store is not None:
            store.close()
    stats.read, stats.rejected = report.read, report.rejected
    stats.seconds = time.perf_counter() - t0
    if done and stats.read and good < done:
        raise ValueError(f"{out} has {done} lines but the catalog has only {good} valid products")
    return stats
