"""The feedback store: tag judgements (accept, reject, add, retract) in the tag store's SQLite file (WAL).

A retract withdraws the same user's latest standing judgement of the same tag on the same product (a
reviewer's undo); both then count as if neither had been sent (`standing`).

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
    product_id TEXT NOT NULL, tag TEXT NOT NULL, action TEXT NOT NULL CHECK (action IN ('accept', 'reject', 'add', 'retract')),
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
            _allow_retract(self.db)
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
        if e.action == "retract" and not self._has_standing(e.user, e.product, e.tag):
            return f"action: {e.user!r} has no standing judgement of {e.tag!r} on {e.product!r} to retract"
        return time_refusal(e.unix_time(now), now, self.future_tolerance_s)

    def _has_standing(self, user: str, product_id: str, tag: str) -> bool:
        rows = self.db.execute(f"SELECT seq, {', '.join(COLUMNS)} FROM feedback WHERE product_id = ? AND user = ? "
                               "AND tag = ?", (product_id, user, tag)).fetchall()
        return bool(standing(dict(zip(("seq", *COLUMNS), r)) for r in rows))

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
        """product -> {tag: right?} from the latest standing judgement of each (product, tag): accept and
        add say the tag is right, reject that it is wrong."""
        latest: dict[tuple[str, str], tuple[float, int, str]] = {}
        for e in standing(self.events() if events is None else events):
            key, when = (e["product_id"], e["tag"]), (_order_time(e), e["seq"], e["action"])
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
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for e in standing(self.events()):
            if e["action"] == "add" or (user is not None and e["user"] != user):
                continue
            c = counts[tag_key(e["tag"])]
            c[0] += e["action"] == "accept"
            c[1] += 1
        return {k: (a, n) for k, (a, n) in counts.items()}

    def stats(self, bucket_s: float = 86400.0) -> dict:
        """Acceptance rate of proposed tags (accepted / judged; adds are not proposals, retracted judgements
        are not counted), overall, per tag key and per time bucket (default: day), with the counts behind
        each; `events` counts every stored event."""
        events = self.events()
        overall, by_key, by_time = _Rate(), defaultdict(_Rate), defaultdict(_Rate)
        added = 0
        for e in standing(events):
            if e["action"] == "add":
                added += 1
                continue
            for rate in (overall, by_key[tag_key(e["tag"])], by_time[int(e["at"] // bucket_s) * bucket_s]):
                rate.count(e["action"] == "accept")
        return {"events": len(events), "added": added, **overall.to_dict(),
                "by_key": {k: r.to_dict() for k, r in sorted(by_key.items())},
                "over_time": [{"from": t, **r.to_dict()} for t, r in sorted(by_time.items())]}


def _order_time(e: dict) -> float:
    # never later than received: an event stored with a time ahead (before that was refused) cannot win
    # over every later judgement
    return min(e["at"], e.get("received_at") or e["at"])


def standing(events: Iterable[dict]) -> list[dict]:
    """The judgements that stand: every event but the retracts and the judgements they withdrew (each
    retract withdraws its user's latest earlier judgement, not yet withdrawn, of that tag on that product)."""
    kept: dict[int, dict] = {}
    last: dict[tuple[str, str, str], list[int]] = defaultdict(list)  # (user, product, tag) -> kept seqs
    for e in sorted(events, key=lambda e: (_order_time(e), e["seq"])):
        key = (e["user"], e["product_id"], e["tag"])
        if e["action"] == "retract":
            if last[key]:
                kept.pop(last[key].pop())
        else:
            kept[e["seq"]] = e
            last[key].append(e["seq"])
    return sorted(kept.values(), key=lambda e: e["seq"])


def _allow_retract(db) -> None:
    """Stores made before `retract` existed have a CHECK that refuses it: rebuild that table once."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'feedback'").fetchone()
    if row is None or "'retract'" in row[0]:
        return
    db.execute("ALTER TABLE feedback RENAME TO feedback_before_retract")
    db.execute(SCHEMA.split(";")[0])
    db.execute("INSERT INTO feedback SELECT * FROM feedback_before_retract")
    db.execute("DROP TABLE feedback_before_retract")


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
