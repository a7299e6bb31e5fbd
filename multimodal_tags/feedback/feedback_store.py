"""The feedback store: tag judgements (accept, reject, add) in the tag store's SQLite file (WAL).

Every event is committed (fsynced: `synchronous=FULL`) before `add` returns, so an acknowledged event
survives a crash. `event_id` is the primary key: a redelivered event is counted as a duplicate and
not stored twice; the same id with other content is refused. Events on products the tag store has
never seen are refused, naming the product.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.tag_tokenizer import tag_key
from .calibration import Calibration
from .events import FUTURE_TOLERANCE_S, FeedbackEvent, effective_time, read_events, time_refusal
from ..tagging.tag_store import TagStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, user TEXT NOT NULL,
    product_id TEXT NOT NULL, tag TEXT NOT NULL, action TEXT NOT NULL CHECK (action IN ('accept', 'reject', 'add')),
    at REAL NOT NULL, model_id TEXT, received_at REAL NOT NULL, extra TEXT
);
CREATE INDEX IF NOT EXISTS feedback_product ON feedback(product_id);
CREATE INDEX IF NOT EXISTS feedback_user ON feedback(user)
"""
COLUMNS = ("event_id", "user", "product_id", "tag", "action", "at", "model_id", "received_at")


@dataclass
class AddResult:
    """What happened to a delivery: stored, already stored (duplicates), refused (position, reason)."""

    stored: int = 0
    duplicates: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"stored {self.stored}, duplicates {self.duplicates}, refused {len(self.refused)}"


class FeedbackStore:
    """Feedback events beside the tags they judge (the same SQLite file as the TagStore)."""

    def __init__(self, store: TagStore | str | Path, future_tolerance_s: float = FUTURE_TOLERANCE_S):
        self.tags = store if isinstance(store, TagStore) else TagStore(store)
        self.future_tolerance_s = future_tolerance_s  # events dated further ahead are refused
        self.db = self.tags.db
        with self.tags.transaction():
            for statement in SCHEMA.split(";"):
                self.db.execute(statement)

    def close(self) -> None:
        self.tags.close()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, events: Sequence[FeedbackEvent]) -> AddResult:
        """Store events in one transaction (committed before returning); refused ones are listed by
        position in `events` with the reason."""
        result, now = AddResult(), time.time()
        with self.tags.transaction():
            for i, e in enumerate(events):
                reason = self._refusal(e, now)
                if reason == "duplicate":
                    result.duplicates += 1
                elif reason:
                    result.refused.append((i, reason))
                else:
                    self.db.execute("INSERT INTO feedback (event_id, user, product_id, tag, action, at, model_id, "
                                    "received_at, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    (e.event_id, e.user, e.product, e.tag, e.action,
                                     effective_time(e.unix_time(now), now), e.model_id, now, None))
                    result.stored += 1
        return result

    def _refusal(self, e: FeedbackEvent, now: float) -> str | None:
        """Why an event cannot be stored ('duplicate' when it already is), or None."""
        old = self.db.execute("SELECT user, product_id, tag, action FROM feedback WHERE event_id = ?",
                              (e.event_id,)).fetchone()
        if old is not None:
            same = old == (e.user, e.product, e.tag, e.action)
            return "duplicate" if same else f"event_id {e.event_id!r} was stored before with other content"
        if not self.tags.has_product(e.product):
            return f"product: unknown product {e.product!r} (tag it first)"
        return time_refusal(e.unix_time(now), now, self.future_tolerance_s)

    def import_file(self, path: str | Path, batch: int = 1000) -> AddResult:
        """Store the events of a JSONL file; refused rows are listed as (row, reason)."""
        return import_rows(read_events(path), self.add, batch)

    def save_calibration(self, cal: Calibration) -> None:
        """Keep a model's calibration (immediate adaptation) in the store."""
        with self.tags.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"calibration:{cal.model_id}",
                                                                          json.dumps(cal.to_dict())))

    def load_calibration(self, model_id: str) -> Calibration | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (f"calibration:{model_id}",)).fetchone()
        return Calibration.from_dict(json.loads(row[0])) if row else None

    def events(self, since_seq: int = 0) -> list[dict]:
        """Stored events in arrival order (after `since_seq`), each with its `seq`."""
        rows = self.db.execute(f"SELECT seq, {', '.join(COLUMNS)} FROM feedback WHERE seq > ? ORDER BY seq",
                               (since_seq,)).fetchall()
        return [dict(zip(("seq", *COLUMNS), r)) for r in rows]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM feedback").fetchone()[0]

    def judgements(self, events: Iterable[dict] | None = None) -> dict[str, dict[str, bool]]:
        """product -> {tag: right?} from the latest judgement of each (product, tag): accept and add say
        the tag is right, reject that it is wrong."""
        latest: dict[tuple[str, str], tuple[float, int, str]] = {}
        for e in self.events() if events is None else events:
            # never later than received: an event stored with a time ahead (before that was refused) cannot
            # win over every later judgement
            at = min(e["at"], e.get("received_at") or e["at"])
            key, when = (e["product_id"], e["tag"]), (at, e["seq"], e["action"])
            if key not in latest or when > latest[key]:
                latest[key] = when
        out: dict[str, dict[str, bool]] = defaultdict(dict)
        for (product, tag), (_, _, action) in latest.items():
            out[product][tag] = action != "reject"
        return dict(out)

    def judgements_of(self, product_ids: Iterable[str]) -> dict[str, dict[str, bool]]:
        """`judgements` of these products only (an indexed lookup each)."""
        rows = []
        for pid in set(product_ids):
            rows += self.db.execute(f"SELECT seq, {', '.join(COLUMNS)} FROM feedback WHERE product_id = ?",
                                    (pid,)).fetchall()
        return self.judgements(dict(zip(("seq", *COLUMNS), r)) for r in rows)

    def key_counts(self, user: str | None = None) -> dict[str, tuple[int, int]]:
        """(accepted, judged) proposed tags per tag key, of one user or (None) of everyone."""
        sql, args = "SELECT tag, action FROM feedback WHERE action != 'add'", ()
        if user is not None:
            sql, args = sql + " AND user = ?", (user,)
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for tag, action in self.db.execute(sql, args):
            c = counts[tag_key(tag)]
            c[0] += action == "accept"
            c[1] += 1
        return {k: (a, n) for k, (a, n) in counts.items()}

    def stats(self, bucket_s: float = 86400.0) -> dict:
        """Acceptance rate of proposed tags (accepted / judged; adds are not proposals), overall, per tag
        key and per time bucket (default: day), with the counts behind each."""
        rows = self.db.execute("SELECT tag, action, at FROM feedback").fetchall()
        overall, by_key, by_time = _Rate(), defaultdict(_Rate), defaultdict(_Rate)
        added = 0
        for tag, action, at in rows:
            if action == "add":
                added += 1
                continue
            for rate in (overall, by_key[tag_key(tag)], by_time[int(at // bucket_s) * bucket_s]):
                rate.count(action == "accept")
        return {"events": len(rows), "added": added, **overall.to_dict(),
                "by_key": {k: r.to_dict() for k, r in sorted(by_key.items())},
                "over_time": [{"from": t, **r.to_dict()} for t, r in sorted(by_time.items())]}


@dataclass
class _Rate:
    accepted: int = 0
    judged: int = 0

    def count(self, accepted: bool) -> None:
        self.accepted += accepted
        self.judged += 1

    def to_dict(self) -> dict:
        rate = self.accepted / self.judged if self.judged else None
        return {"accepted": self.accepted, "judged": self.judged, "acceptance_rate": rate}


def import_rows(rows: Iterable[tuple[int, Any, str | None]], add: Callable[[list], AddResult],
                batch: int = 1000) -> AddResult:
    """Hand the parsed rows of a file (see events.read_events) to `add` in batches; the refusals of
    parsing and of `add` alike are listed as (row, reason), in row order."""
    result, pending, numbers = AddResult(), [], []

    def flush() -> None:
        part = add(pending)
        result.stored, result.duplicates = result.stored + part.stored, result.duplicates + part.duplicates
        result.refused.extend((numbers[i], reason) for i, reason in part.refused)
        pending.clear(), numbers.clear()

    for row, item, reason in rows:
        if item is None:
            result.refused.append((row, reason))
            continue
        pending.append(item), numbers.append(row)
        if len(pending) >= batch:
            flush()
    flush()
    result.refused.sort()
    return result


def import_events(store_path: str | Path, events_path: str | Path) -> AddResult:
    """`mmtags feedback import`: the events of a JSONL file into the store."""
    with FeedbackStore(store_path) as fb:
        return fb.import_file(events_path)
