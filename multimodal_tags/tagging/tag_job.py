"""`mmtags tag`: tag a whole catalog, streaming, in bounded memory, resumable after any interruption.

The catalog is read row by row; products go through the model in batches; each batch's lines are
written in one write, flushed and fsynced. A rerun finds the lines already written, drops a trailing
partial line and anything after the last whole batch, skips that many products, and carries on:
the output equals an uninterrupted run's, with no product missing and none twice. Bad rows go to
the rejects file (rewritten on every run, since rows are re-read anyway).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from tqdm import tqdm

from ..data.catalog import DiskIdIndex, ReadReport, image_root_for, iter_catalog
from ..data.readers import check_catalog_file
from ..data.schema import Product
from ..data.validate import Limits
from ..features.settings import RunConfig
from ..inference.batch_tagger import BatchTagger
from ..inference.rows import DEFAULT_TAG_SOURCE
from ..models.compiled import resolve_compile
from .shards import Shard, current_shard, gather_counts, merge_shards, wait_for_everyone
from .tag_store import TagStore

TAG_BATCH_SIZE = 256  # products per forward pass and per output write (a rerun resumes at a whole batch)
CALIBRATION_PRODUCTS = 5000  # labelled val products read to calibrate zero-shot tags: enough, bounded memory


@dataclass
class TagConfig:
    """How `tag` and `refresh` read the catalog and choose tags."""

    batch_size: int = TAG_BATCH_SIZE
    tag_source: str = DEFAULT_TAG_SOURCE  # auto, decoder, head or both
    image_root: str | Path | None = None  # None: the catalog's meta, else its folder
    limits: Limits | None = None
    extra_tags: list[str] = field(default_factory=list)  # scored zero-shot by CLIP similarity (tag only)
    clip: str | None = None  # the CLIP that scores extra_tags (image encoder spec); None: the model's own
    decode_workers: int | None = None  # processes decoding the next batches' photos (0: none; None: by cores)
    decoder: str = "auto"  # auto (the LM decoder where the model folder holds one), scratch or lm
    ask_keys: list[str] = field(default_factory=list)  # keys whose values the LM decoder writes freely


@dataclass
class TagStats:
    read: int = 0
    kept: int = 0  # valid products in the catalog
    tagged: int = 0
    resumed_after: int = 0  # products found already tagged in the output
    store_repaired: int = 0  # of those, rows the store lacked (or held otherwise) and got
    rejected: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        s = f"read {self.read} rows: tagged {self.tagged}, rejected {self.rejected}"
        if self.resumed_after:
            s += f", {self.resumed_after} already done by an earlier run"
        if self.store_repaired:
            s += f" ({self.store_repaired} of them written to the store, which lacked them)"
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


def sync_store(out: Path, lines: int, store: TagStore, batch_size: int,
               products: Iterator[Product] | None = None) -> int:
    """Bring the store up to the first `lines` rows of the output (written by an earlier run, with or
    without this store, or killed between the output and the store): the store is never behind the
    output. `products`, the catalog's valid products in output order, are kept with their rows.
    Returns how many rows it wrote."""
    written, batch, kept = 0, [], []
    with open(out, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n >= lines:
                break
            batch.append(json.loads(line))
            if products is not None:
                kept.append(next(products))
            if len(batch) == batch_size:
                written += _write_pending(store, batch, kept)
                batch, kept = [], []
    return written + _write_pending(store, batch, kept)


def _write_pending(store: TagStore, rows: list[dict], products: list[Product] = ()) -> int:
    changes = {r["id"]: kind for r in rows if (kind := store.pending_change(r))}
    if changes:
        store.write([r for r in rows if r["id"] in changes], changes, [p for p in products if p.id in changes])
    return len(changes)


def _calibration_products(catalog_path: Path, root: Path, limits: Limits | None) -> list[Product]:
    """The first CALIBRATION_PRODUCTS val products of the catalog."""
    calibration = []
    for p in iter_catalog(catalog_path, root, limits):
        if p.split == "val":
            calibration.append(p)
            if len(calibration) >= CALIBRATION_PRODUCTS:
                break
    return calibration


@dataclass
class _BatchWriter:
    """Writes a tagged batch: one fsynced write to the output, then the store."""

    out: BinaryIO
    store: TagStore | None
    stats: TagStats
    bar: tqdm

    def __call__(self, batch: list[Product], rows: list[dict]) -> None:
        self.out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
        self.out.flush()
        os.fsync(self.out.fileno())
        if self.store is not None:
            self.store.write(rows, {r["id"]: self.store.pending_change(r) or "unchanged" for r in rows}, batch)
        self.stats.tagged += len(rows)
        self.bar.update(len(rows))


def _products_after(products: Iterator[Product], report: ReadReport, rejects: TextIO,
                    resume: tuple[int, str | None, Path], resumed: Callable[[], None]) -> Iterator[Product]:
    """The valid products after the first `done` lines of the output (`resume`: done, the id on its
    last line, the output), streaming issues to the rejects file as they come. `resumed()` is called
    once the output is known to continue this catalog."""
    done, last_id, out = resume
    good = 0
    for product in products:
        good += 1
        _write_issues(report, rejects)
        if good < done:
            continue
        if good == done:
            if product.id != last_id:
                raise ValueError(f"{out} does not continue this catalog (line {done} is {last_id!r}, the "
                                 f"catalog's product {done} is {product.id!r}); write to a new --out")
            resumed()
            continue
        yield product
    _write_issues(report, rejects)
    if done and report.read and good < done:
        raise ValueError(f"{out} has {done} lines but the catalog has only {good} valid products")


def _write_issues(report: ReadReport, rejects: TextIO) -> None:
    for issue in report.issues:  # streamed out instead of kept
        rejects.write(json.dumps(issue.to_dict(), ensure_ascii=False) + "\n")
    report.issues.clear()


def tag_catalog(model_dir: str | Path, catalog_path: str | Path, out_path: str | Path,
                store_path: str | Path | None = None, settings: RunConfig | None = None,
                options: TagConfig | None = None, rejects_path: str | Path | None = None) -> TagStats:
    """Tag every valid product of the catalog into `out_path` (JSONL), and into the store if given.
    `options.extra_tags` are scored zero-shot by CLIP similarity, calibrated on the catalog's val products.
    Under `accelerate launch` the processes share the catalog (tagging/shards.py): the output is the same."""
    settings, options = settings or RunConfig(), options or TagConfig()
    catalog_path, out = Path(catalog_path), Path(out_path)
    check_catalog_file(catalog_path)  # before anything is written
    settings = _compile_for(settings, catalog_path)
    shard = current_shard()
    if shard.world == 1:
        return _tag_stream(model_dir, catalog_path, out, store_path, settings, options, rejects_path, shard)
    return _tag_sharded(model_dir, catalog_path, out, store_path, settings, options, rejects_path, shard)


def _compile_for(settings: RunConfig, catalog_path: Path) -> RunConfig:
    """`auto` compiles the encoders for a catalog of COMPILE_MIN_ITEMS rows or more: each batch is a small
    job, the catalog is not (models/compiled.py)."""
    if settings.compile != "auto":
        return settings
    with open(catalog_path, "rb") as f:
        rows = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    return dataclasses.replace(settings, compile="on") if resolve_compile("auto", rows, settings.device or "cpu") \
        else settings


def _tag_sharded(model_dir, catalog_path: Path, out: Path, store_path, settings: RunConfig, options: TagConfig,
                 rejects_path, shard: Shard) -> TagStats:
    """This process's shard, then (main process) the merge and the store; every process returns the totals."""
    if out.exists() and not shard.path(out).exists():
        raise ValueError(f"{out} exists and has no shards of a {shard.world}-process run: it was written by "
                         f"another run; write to a new --out")
    rejects = (rejects_path or f"{out}.rejects.jsonl") if shard.is_main else os.devnull
    quiet = settings if shard.is_main else dataclasses.replace(settings, progress=False, log=lambda s: None)
    stats = _tag_stream(model_dir, catalog_path, shard.path(out), None, quiet, options, rejects, shard)
    counts = gather_counts([stats.tagged, stats.resumed_after])
    stats.tagged, stats.resumed_after = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if shard.is_main:
        merge_shards(out, shard.world)
        if store_path:
            products = iter_catalog(catalog_path, image_root_for(catalog_path, options.image_root), options.limits)
            with TagStore(store_path) as store:
                sync_store(out, stats.tagged + stats.resumed_after, store, options.batch_size, products)
    wait_for_everyone()
    return stats


def _tag_stream(model_dir, catalog_path: Path, out: Path, store_path, settings: RunConfig, options: TagConfig,
                rejects_path, shard: Shard) -> TagStats:
    """Tag the shard's products of the catalog into `out` (resuming it), and into the store if given."""
    tagger = BatchTagger(model_dir, settings.cache_for(catalog_path), settings, options.tag_source,
                         options.decoder, options.ask_keys)
    root = image_root_for(catalog_path, options.image_root)
    if options.extra_tags:
        tagger.enable_zero_shot(options.extra_tags, _calibration_products(catalog_path, root, options.limits), root,
                                settings.log, clip=options.clip)
    stats, t0 = TagStats(), time.perf_counter()
    done, last_id = _resume_point(out, options.batch_size)
    stats.resumed_after = done
    report, seen = ReadReport(str(catalog_path)), DiskIdIndex()  # duplicates caught on disk, not in memory
    store = TagStore(store_path) if store_path else None
    out.parent.mkdir(parents=True, exist_ok=True)

    def resumed() -> None:  # the output continues this catalog: the store must hold what it holds
        if store is not None:
            stats.store_repaired = sync_store(out, done, store, options.batch_size)

    try:
        with open(out, "ab") as f_out, open(rejects_path or f"{out}.rejects.jsonl", "w", encoding="utf-8") as f_rej, \
                tqdm(desc="tag", unit="product", disable=not settings.progress) as bar:
            write = _BatchWriter(f_out, store, stats, bar)
            products = shard.select(iter_catalog(catalog_path, root, options.limits, report, seen=seen))
            todo = batches(_products_after(products, report, f_rej, (done, last_id, out), resumed), options.batch_size)
            for batch, rows in tagger.tag_stream(todo, root, options.decode_workers):
                write(batch, rows)
    finally:
        seen.close()
        if store is not None:
            store.close()
    stats.read, stats.kept, stats.rejected = report.read, report.kept, report.rejected
    if not stats.kept and out.exists() and out.stat().st_size == 0:
        out.unlink()  # no valid product: no empty output left behind (the rejects say why)
    stats.seconds = time.perf_counter() - t0
    return stats


def batches(products: Iterable[Product], batch_size: int) -> Iterator[list[Product]]:
    """Whole batches of `batch_size` products, then the rest."""
    batch: list[Product] = []
    for product in products:
        batch.append(product)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_batches(products: Iterable[Product], batch_size: int, handle: Callable[[list[Product]], None]) -> None:
    """Call `handle` on each whole batch of `batch_size` products, then on the rest."""
    for batch in batches(products, batch_size):
        handle(batch)
