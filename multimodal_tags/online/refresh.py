"""`mmtags refresh`: keep the tag store in step with the catalog, doing only the work that changed.

Each catalog product is compared with the store by content hash and model id:
new (not in the store, or removed before), changed (content hash differs), retagged (same content,
tagged by another model), unchanged (nothing to do). Products in the store but no longer in the
catalog are marked removed. Work is committed batch by batch, so an interrupted refresh resumes
where it stopped, and a second refresh in a row does nothing (it does not even load the encoders).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.catalog import DiskIdIndex, ReadReport, image_root_for, iter_catalog
from ..data.validate import Limits
from .batch_tagger import BatchTagger
from .store import TagStore

KINDS = ("new", "changed", "retagged", "unchanged")


@dataclass
class RefreshStats:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*KINDS, "removed", "failed"), 0))
    seconds: float = 0.0

    @property
    def work(self) -> int:
        return sum(self.counts[k] for k in ("new", "changed", "retagged", "removed"))

    def summary(self) -> str:
        c = self.counts
        s = (f"new {c['new']}, changed {c['changed']}, retagged (model changed) {c['retagged']}, unchanged "
             f"{c['unchanged']}, removed {c['removed']}, failed {c['failed']}")
        return s + ("" if self.work else "  (nothing to do)")


def refresh(model_dir: str | Path, catalog_path: str | Path, store_path: str | Path, batch_size: int = 256,
            tag_source: str = "both", cache_dir: str | Path | None = None, image_root: str | Path | None = None,
            limits: Limits | None = None, precision: str = "auto", allow_random_weights: bool = False,
            log: Callable[[str], None] = print) -> RefreshStats:
    catalog_path = Path(catalog_path)
    cache_dir = Path(cache_dir or catalog_path.resolve().parent / "features-cache")
    tagger = BatchTagger(model_dir, cache_dir, tag_source, precision, allow_random_weights)
    root = image_root_for(catalog_path, image_root)
    stats, t0 = RefreshStats(), time.perf_counter()
    report = ReadReport(str(catalog_path))
    seen = DiskIdIndex()
    with TagStore(store_path) as store:
        store.db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
        store.db.execute("DELETE FROM seen")
        pending, changes = [], {}

        def flush() -> None:
            rows = tagger.tag(pending, root)
            store.write(rows, changes)
            pending.clear()
            changes.clear()

        try:
            for product in iter_catalog(catalog_path, root, limits, report, seen=seen):
                store.db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (product.id,))
                kind = store.change_kind(product.id, product.content_hash, tagger.model_id)
                stats.counts[kind] += 1
                if kind == "unchanged":
                    continue
                pending.append(product)
                changes[product.id] = kind
                if len(pending) == batch_size:
                    flush()
            if pending:
                flush()
        finally:
            seen.close()
        stats.counts["failed"] = report.rejected
        if report.read == 0 or report.kept == 0:
            log(f"warning: {catalog_path} has no valid products; nothing is marked removed")
        else:
            stats.counts["removed"] = store.mark_removed("seen")
    for issue in report.issues[:20]:
        log(f"  {issue}")
    stats.seconds = time.perf_counter() - t0
    return stats
