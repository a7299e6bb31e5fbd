"""`mmtags refresh`: keep the tag store in step with the catalog, doing only the work that changed.

Each catalog product is compared with the store by content hash and model id:
new (not in the store, or removed before), changed (content hash differs), retagged (same content,
tagged by another model), unchanged (nothing to do). Products in the store but no longer in the
catalog are marked removed. Work is committed batch by batch, so an interrupted refresh resumes
where it stopped, and a second refresh in a row does nothing (it does not even load the encoders).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..data.catalog import MAX_ISSUES_SHOWN, DiskIdIndex, ReadReport, image_root_for, iter_catalog
from ..data.readers import check_catalog_file
from ..data.schema import Product
from ..features.settings import RunConfig
from ..inference.batch_tagger import BatchTagger
from .tag_store import TagStore
from .tag_job import TagConfig, run_batches

KINDS = ("new", "changed", "retagged", "unchanged")


@dataclass
class RefreshStats:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*KINDS, "removed", "failed"), 0))
    kept: int = 0  # valid products in the catalog
    seconds: float = 0.0

    @property
    def work(self) -> int:
        return sum(self.counts[k] for k in ("new", "changed", "retagged", "removed"))

    def summary(self) -> str:
        c = self.counts
        s = (f"new {c['new']}, changed {c['changed']}, retagged (model changed) {c['retagged']}, unchanged "
             f"{c['unchanged']}, removed {c['removed']}, failed {c['failed']}")
        return s + ("" if self.work else "  (nothing to do)")


def refresh(model_dir: str | Path, catalog_path: str | Path, store_path: str | Path,
            settings: RunConfig | None = None, options: TagConfig | None = None) -> RefreshStats:
    """Re-tag what changed since the store was written (see the module docstring); returns the counts."""
    settings, options = settings or RunConfig(), options or TagConfig()
    catalog_path = Path(catalog_path)
    check_catalog_file(catalog_path)  # before the store is opened (or created)
    tagger = BatchTagger(model_dir, settings.cache_for(catalog_path), settings, options.tag_source,
                         options.decoder, options.ask_keys)
    root = image_root_for(catalog_path, options.image_root)
    stats, t0 = RefreshStats(), time.perf_counter()
    report = ReadReport(str(catalog_path))
    seen = DiskIdIndex()  # duplicate ids, on disk
    try:
        with TagStore(store_path) as store:
            kinds: dict[str, str] = {}  # product id -> change kind, for the products in flight
            products = iter_catalog(catalog_path, root, options.limits, report, seen=seen)
            run_batches(_needing_work(products, store, tagger.model_id, stats, kinds), options.batch_size,
                        lambda batch: store.write(tagger.tag(batch, root), {p.id: kinds.pop(p.id) for p in batch},
                                                      batch))
            stats.counts["failed"], stats.kept = report.rejected, report.kept
            if report.read == 0 or report.kept == 0:
                settings.log(f"warning: {catalog_path} has no valid products; nothing is marked removed")
            else:
                stats.counts["removed"] = store.mark_removed(seen)  # seen: the catalog's valid ids
    finally:
        seen.close()
    for issue in report.issues[:MAX_ISSUES_SHOWN]:
        settings.log(f"  {issue}")
    stats.seconds = time.perf_counter() - t0
    return stats


def _needing_work(products: Iterator[Product], store: TagStore, model_id: str, stats: RefreshStats,
                  kinds: dict[str, str]) -> Iterator[Product]:
    """The products that are not unchanged in the store (their kind recorded in `kinds`), each counted."""
    for product in products:
        kind = store.change_kind(product.id, product.content_hash, model_id)
        stats.counts[kind] += 1
        if kind != "unchanged":
            kinds[product.id] = kind
            yield product
