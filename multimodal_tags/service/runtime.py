"""The service's worker threads, each owning what it touches (SQLite connections are per thread):

- the model thread holds the LearningTagger: tags batches, re-fits the calibration from feedback, and
  swaps in a newly promoted model between two batches (no request is dropped: those queued run on
  the new model, the batch in flight finishes on the old one);
- the store thread holds the service's store connection: feedback writes (committed before the
  reply), stored tags, statistics;
- the read thread answers recommendations and the review queue.
Calibration fits and recommendation index rebuilds, mostly Python, run in background processes
(service/background.py), where they do not hold the GIL the threads above need.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..data.schema import Product
from ..features.settings import RunConfig
from ..inference.batch_tagger import BatchTagger
from ..feedback.adapt import PROMOTED_KEY
from ..feedback.feedback_store import AddResult, FeedbackStore
from ..feedback.review_queue import all_cards
from ..feedback.calibration import fit_calibration
from ..feedback.events import FUTURE_TOLERANCE_S, effective_time
from ..feedback.learner import LearningTagger
from ..personal.profiles import Profiles, add_interactions, feedback_key, ranked_tags
from ..personal.tag_index import build_index, signature
from ..tagging.tag_store import TagStore
from .auth import KeyRing
from .background import BackgroundProcess
from .limits import RateLimiter


@dataclass
class ServiceConfig:
    model_dir: Path
    store_path: Path
    cache_dir: Path
    image_root: Path | None = None  # photos given as paths must lie inside it
    uploads_dir: Path | None = None  # uploaded photos are kept here (default: beside the store)
    keys: KeyRing | None = None  # API keys and their scopes (service/auth.py); None: every route is open
    max_body_bytes: int = 16 * 1024 * 1024
    limiter: RateLimiter | None = None  # requests per second per client (service/limits.py); None: unlimited
    index_refresh_s: float = 5.0  # recommendations see products tagged up to about this long ago
    body_timeout_s: float = 30.0  # longest wait for the next part of a request body (slow clients: 408)
    max_batch: int = 32  # products per forward pass
    batch_wait_s: float = 0.005  # how long the first request of a batch waits for company
    refit_every: int = 200  # feedback events between calibration re-fits
    refit_interval_s: float = 30.0  # and at least this long between two
    watch_s: float = 2.0  # how often the store is checked for a newly promoted model
    future_tolerance_s: float = FUTURE_TOLERANCE_S  # events dated further ahead of the server are refused
    tag_source: str = "auto"
    settings: RunConfig = field(default_factory=lambda: RunConfig(progress=False))

    @property
    def uploads(self) -> Path:
        return self.uploads_dir or self.store_path.resolve().parent / "uploads"


class ModelThread:
    """The LearningTagger and everything that runs it, on one thread."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.fitter = BackgroundProcess()  # fits are Python: off the service's GIL
        self._refitting = asyncio.Lock()
        self.learner: LearningTagger | None = None
        self.model_dir = cfg.model_dir
        self._checked = 0.0
        self.pool.submit(self._load, cfg.model_dir).result()

    def _load(self, model_dir: Path) -> None:
        tagger = BatchTagger(model_dir, self.cfg.cache_dir, self.cfg.settings, self.cfg.tag_source)
        feedback = self.learner.feedback if self.learner else FeedbackStore(self.cfg.store_path)
        self.learner, self.model_dir = LearningTagger(tagger, feedback, self.cfg.image_root or Path(".")), model_dir

    def tag(self, groups: list[tuple[Path, list[Product]]]) -> list[list[dict]]:
        """Rows for each group of products sharing an image root (runs on the model thread)."""
        self._maybe_swap()
        return [self.learner.tag(products, root) for root, products in groups]

    async def refit(self) -> None:
        """Re-fit the calibration without holding up tagging: inputs read and scored on the model thread,
        the fit in a background process, the result installed on the model thread. One at a time; a
        failed fit is logged and the calibration in use stays."""
        if self._refitting.locked():
            return
        async with self._refitting:
            inputs = await self.run(self.learner.refit_inputs)
            try:
                cal = await asyncio.wrap_future(self.fitter.submit(fit_calibration, *inputs))
            except Exception as e:  # noqa: BLE001 - e.g. the process was killed: the next re-fit tries again
                self.cfg.settings.log(f"calibration re-fit failed ({type(e).__name__}: {e}); keeping the current one")
                return
            await self.run(self.learner.install, cal)

    def _maybe_swap(self) -> None:
        if time.monotonic() - self._checked < self.cfg.watch_s:
            return
        self._checked = time.monotonic()
        promoted = self.learner.feedback.tags.get_meta(PROMOTED_KEY)
        if promoted and Path(promoted) != Path(self.model_dir) and (Path(promoted) / "config.json").exists():
            self.cfg.settings.log(f"swapping in the promoted model {promoted}")
            self._load(Path(promoted))

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        if self.learner is not None:  # its connection belongs to the model thread
            self.pool.submit(self.learner.feedback.close).result()
        self.pool.shutdown(wait=True)
        self.fitter.shutdown()


class ReadThread:
    """Recommendations, on a thread and a connection of their own (never the one that acknowledges
    feedback), from a TagIndex kept between requests: when the products have changed (checked at most
    every `refresh_s`), a new index is built in the background while requests go on with the old one."""

    def __init__(self, cfg: ServiceConfig):
        refresh_s = cfg.index_refresh_s
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="read")
        self.builder = BackgroundProcess()  # rebuilds are Python: off the service's GIL
        self.log = cfg.settings.log
        self.store_path, self.refresh_s, self.checked, self.building = cfg.store_path, refresh_s, 0.0, None
        self.store: TagStore = self.pool.submit(TagStore, cfg.store_path).result()
        self.profiles = self.pool.submit(Profiles, self.store).result()
        self.feedback = self.pool.submit(FeedbackStore, self.store).result()  # the review queue's judgements
        self._cards, self._cards_signature = ([], {}), None
        self.signature, self.index = build_index(self.store_path)  # here: no process to start before serving

    def review_cards(self) -> tuple[list[dict], dict]:
        """(runs on the read thread) Every live product's review card and the feedback statistics, made
        again only when the products or the feedback changed since the last request."""
        current = (*signature(self.store), self.feedback.last_seq())
        if current != self._cards_signature:
            self._cards = all_cards(self.store, self.feedback), self.feedback.stats()
            self._cards_signature = current
        return self._cards

    def recommendations(self, user: str, k: int) -> list[dict]:
        """(runs on the read thread) The user's top k products from the current index."""
        if self.building is not None and self.building.done():
            try:
                self.signature, self.index = self.building.result()
            except Exception as e:  # noqa: BLE001 - the previous index serves on; the next check builds again
                self.log(f"recommendation index rebuild failed ({type(e).__name__}: {e}); serving the previous one")
            self.building = None
        if self.building is None and time.monotonic() - self.checked >= self.refresh_s:
            self.checked = time.monotonic()
            if signature(self.store) != self.signature:
                self.building = self.builder.submit(build_index, self.store_path)
        return self.index.top(self.profiles.affinities(user), k)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.builder.shutdown()
        self.pool.submit(self.store.close).result()
        self.pool.shutdown(wait=True)


class StoreThread:
    """The service's store connection, on one thread; counts events since the last re-fit."""

    def __init__(self, cfg: ServiceConfig):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.fb: FeedbackStore = self.pool.submit(FeedbackStore, cfg.store_path, cfg.future_tolerance_s).result()
        self.future_tolerance_s = cfg.future_tolerance_s
        self.profiles = self.pool.submit(Profiles, self.fb.tags).result()
        self.since_refit, self.last_refit = 0, 0.0
        self.lock = threading.Lock()

    def add(self, events) -> AddResult:
        """Store events, then count the stored ones in their users' profiles (derived data: a profile can
        be rebuilt from the events; each event counts once)."""
        result = self.fb.add(events)
        refused = {i for i, _ in result.refused}
        now = time.time()
        self.profiles.add_many((feedback_key(e.event_id), e.user, e.action, [e.tag],
                                effective_time(e.unix_time(now), now))
                               for i, e in enumerate(events) if i not in refused)
        with self.lock:
            self.since_refit += result.stored
        return result

    def write_rows(self, rows: list[dict], products: list[Product]) -> None:
        store = self.fb.tags
        store.write(rows, {r["id"]: store.pending_change(r) or "unchanged" for r in rows}, products)

    def add_interactions(self, interactions) -> AddResult:
        return add_interactions(self.profiles, interactions, self.future_tolerance_s)

    def current_tags(self, product_id: str, user: str | None = None) -> dict | None:
        """The stored row of a product with its judgements applied (None when unknown); with `user`,
        `ranked` orders its tags by that user's profile."""
        row = self.fb.tags.get(product_id)
        if row is None:
            return None
        judged = self.fb.judgements_of([product_id]).get(product_id, {})
        for tag, right in judged.items():
            if not right:
                row["tags"].pop(tag, None)
            elif tag not in row["tags"]:
                row["tags"][tag] = {"score": 1.0, "source": "feedback"}
        row["judged"] = judged
        if user is not None:
            row["ranked"] = ranked_tags(row, self.profiles, user)
        return row

    def take_refit_due(self, every: int, interval_s: float) -> bool:
        """Whether a re-fit is due (enough new events, long enough since the last); resets the count."""
        with self.lock:
            if self.since_refit < every or time.monotonic() - self.last_refit < interval_s:
                return False
            self.since_refit, self.last_refit = 0, time.monotonic()
            return True

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.submit(self.fb.close).result()
        self.pool.shutdown(wait=True)
