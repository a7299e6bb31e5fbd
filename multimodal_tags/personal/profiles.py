"""User profiles: per-user tag affinities from that user's events, kept in SQLite beside the tag store.

An event gives weight to tags: a purchase or a click to every tag of the product, tag feedback to
its one tag (an accept or add for it, a reject against it). Weights decay with age (half-life
`half_life_days`), so recent events count more and repeated ones add up. A profile is stored as
(user, tag) -> (value, as of when): adding an event decays the stored value to the event's time and
adds the weight, so updates are incremental and reading needs no replay.

A user's affinity for a tag is shrunk towards the global one by how much evidence the user has:
    affinity(u, t) = (m_u * share_u(t) + k * global(t)) / (m_u + k)
where share_u is the user's (positive) mass on t over all of it, m_u that mass and k `shrinkage`.
An unknown user (m_u = 0) gets the global profile.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..feedback.events import (FUTURE_TOLERANCE_S, Interaction, effective_time, parse_interaction, read_events,
                               time_refusal)
from ..feedback.feedback_store import AddResult, import_rows
from ..tagging.tag_store import TagStore
from .tag_index import TagIndex

SCHEMA = """
CREATE TABLE IF NOT EXISTS profile (
    user TEXT NOT NULL, tag TEXT NOT NULL, value REAL NOT NULL, as_of REAL NOT NULL, PRIMARY KEY (user, tag)
);
CREATE TABLE IF NOT EXISTS profile_events (event_id TEXT PRIMARY KEY, user TEXT NOT NULL, at REAL NOT NULL)
"""
GLOBAL = ""  # the user id the global profile is kept under
DAY = 86400.0


@dataclass
class ProfileConfig:
    half_life_days: float = 30.0
    shrinkage: float = 5.0  # k: how much evidence (event weight) counts as much as the global profile
    weights: dict[str, float] | None = None  # event kind -> weight (see WEIGHTS)


# a retract (a reviewer's undo) counts for nothing; the judgement it withdrew stays in the profile, ageing
# out like any other event (profiles are derived data, rebuilt from the events by sync_feedback)
WEIGHTS = {"purchase": 1.0, "click": 0.3, "accept": 0.5, "add": 0.7, "reject": -0.5, "retract": 0.0}


class Profiles:
    """Per-user tag affinities in the tag store's SQLite file."""

    def __init__(self, store: TagStore, settings: ProfileConfig | None = None):
        self.store, self.db = store, store.db
        self.settings = settings or ProfileConfig()
        self.weights = {**WEIGHTS, **(self.settings.weights or {})}
        with store.transaction():
            for statement in SCHEMA.split(";"):
                self.db.execute(statement)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(profile_events)")}
            if "content" not in columns:  # what a redelivery must repeat (stores made before it: NULL)
                self.db.execute("ALTER TABLE profile_events ADD COLUMN content TEXT")

    def counted_content(self, event_id: str) -> str | None:
        """The content an event_id was counted with ("" when counted without one), None when never counted."""
        row = self.db.execute("SELECT content FROM profile_events WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else (row[0] or "")

    def _decay(self, age_s: float) -> float:
        return 0.5 ** (max(age_s, 0.0) / (self.settings.half_life_days * DAY))

    def add(self, event_id: str, user: str, kind: str, tags: Iterable[str], at: float | None = None) -> bool:
        """Count one event for `user` (and the global profile): `kind` is purchase, click, accept, add or
        reject; `tags` the product's tags (or the judged tag). False when event_id was counted before."""
        return self.add_many([(event_id, user, kind, tags, at)]) == 1

    def add_many(self, events: Iterable[tuple[str, str, str, Iterable[str], float | None]],
                 contents: dict[str, str] | None = None) -> int:
        """`add` for many (event_id, user, kind, tags, at) in one transaction; returns how many counted.
        `contents`: per event_id, what a redelivery must repeat (see `counted_content`)."""
        counted, contents = 0, contents or {}
        with self.store.transaction():
            for event_id, user, kind, tags, at in events:
                if kind not in self.weights:
                    raise ValueError(f"kind: {kind!r} is not one of {', '.join(self.weights)}")
                at = time.time() if at is None else at
                if self.db.execute("SELECT 1 FROM profile_events WHERE event_id = ?", (event_id,)).fetchone():
                    continue
                self.db.execute("INSERT INTO profile_events (event_id, user, at, content) VALUES (?, ?, ?, ?)",
                                (event_id, user, at, contents.get(event_id)))
                for who in (user, GLOBAL):
                    for tag in set(tags):
                        self._bump(who, tag, self.weights[kind], at)
                counted += 1
        return counted

    def _bump(self, user: str, tag: str, weight: float, at: float) -> None:
        row = self.db.execute("SELECT value, as_of FROM profile WHERE user = ? AND tag = ?", (user, tag)).fetchone()
        if row is None:
            value, as_of = weight, at
        elif at >= row[1]:  # the stored value, decayed to this event's time, plus the event
            value, as_of = row[0] * self._decay(at - row[1]) + weight, at
        else:  # an event older than the stored value (delivered late): decayed to the stored time
            value, as_of = row[0] + weight * self._decay(row[1] - at), row[1]
        self.db.execute("INSERT OR REPLACE INTO profile VALUES (?, ?, ?, ?)", (user, tag, value, as_of))

    def raw(self, user: str, now: float | None = None) -> dict[str, float]:
        """The user's decayed tag values (negative: tags the user rejects)."""
        now = time.time() if now is None else now
        rows = self.db.execute("SELECT tag, value, as_of FROM profile WHERE user = ?", (user,)).fetchall()
        return {tag: value * self._decay(now - as_of) for tag, value, as_of in rows}

    def affinities(self, user: str | None, now: float | None = None) -> dict[str, float]:
        """The user's shrunk affinity per tag (the global profile for unknown users)."""
        global_share, _ = _shares(self.raw(GLOBAL, now))
        if not user:
            return global_share
        share, mass = _shares(self.raw(user, now))
        k = self.settings.shrinkage
        tags = set(global_share) | set(share)
        return {t: (mass * share.get(t, 0.0) + k * global_share.get(t, 0.0)) / (mass + k) for t in tags}


def _shares(values: dict[str, float]) -> tuple[dict[str, float], float]:
    """Each tag's share of the positive mass (negative values stay negative, same scale), and the mass."""
    mass = sum(v for v in values.values() if v > 0)
    if mass <= 0:
        return {t: v for t, v in values.items() if v < 0}, 0.0
    return {t: v / mass for t, v in values.items()}, mass


def rank_tags(tags: Sequence[str], affinity: dict[str, float], scores: dict[str, float] | None = None) -> list[str]:
    """A product's tags ordered by the user's affinity (ties: by the model's score, then as given)."""
    scores = scores or {}
    order = {t: i for i, t in enumerate(tags)}
    return sorted(tags, key=lambda t: (-affinity.get(t, 0.0), -scores.get(t, 0.0), order[t]))


def match_score(product_tags: Iterable[str], affinity: dict[str, float], idf: dict[str, float] | None = None) -> float:
    """How well a product's tags match a profile: the idf-weighted affinity of its tags, over the
    square root of their weights' sum of squares (a product is not better for having more tags)."""
    weights = {t: (idf or {}).get(t, 1.0) for t in set(product_tags)}
    norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
    return sum(w * affinity.get(t, 0.0) for t, w in weights.items()) / norm


def ranked_tags(stored: dict, profiles: Profiles, user: str | None) -> list[str]:
    """A stored product's tags (TagStore.get) in the order of the user's profile."""
    scores = {t: v["score"] for t, v in stored["tags"].items()}
    return rank_tags(list(stored["tags"]), profiles.affinities(user), scores)


def recommend(store: TagStore, profiles: Profiles, user: str | None, k: int = 10) -> list[dict]:
    """The k live products whose stored tags best match the user's profile (idf over the store's tags);
    an unknown user gets the global profile's picks. (The service keeps the index between requests.)"""
    return TagIndex.build(store).top(profiles.affinities(user), k)


def _interaction_refusal(profiles: Profiles, e: Interaction, now: float, tolerance_s: float) -> str | None:
    """Why an interaction cannot be counted ("duplicate" when it was, with the same content), or None."""
    counted = profiles.counted_content(f"interaction:{e.event_id}")
    if counted is not None:
        same = counted in ("", e.content())
        return "duplicate" if same else f"event_id {e.event_id!r} was counted before with other content"
    if profiles.store.get(e.product) is None:
        return f"product: unknown product {e.product!r} (tag it first)"
    return time_refusal(e.unix_time(now), now, tolerance_s)


def add_interactions(profiles: Profiles, interactions: Sequence[Interaction],
                     future_tolerance_s: float = FUTURE_TOLERANCE_S) -> AddResult:
    """Count purchases and clicks in their users' profiles, over the products' stored tags; a product
    the store does not know, a time too far ahead or a reused event_id with other content is refused
    (by position), a redelivered event counted once."""
    result, batch, contents, now = AddResult(), [], {}, time.time()
    for i, e in enumerate(interactions):
        key = f"interaction:{e.event_id}"
        reason = _interaction_refusal(profiles, e, now, future_tolerance_s)
        if reason is None and key in contents:  # the same event_id earlier in this delivery
            reason = "duplicate" if contents[key] == e.content() else \
                f"event_id {e.event_id!r} comes twice in this delivery with other content"
        if reason == "duplicate":
            result.duplicates += 1
        elif reason:
            result.refused.append((i, reason))
        else:
            contents[key] = e.content()
            batch.append((key, e.user, e.kind, list(profiles.store.get(e.product)["tags"]),
                          effective_time(e.unix_time(now), now)))
    result.stored = profiles.add_many(batch, contents)
    return result


def import_interactions(store_path: str | Path, path: str | Path) -> AddResult:
    """`mmtags interactions import`: a JSONL file of purchases and clicks into the store's profiles;
    refused rows are listed as (row, reason)."""
    with TagStore(store_path) as store:
        profiles = Profiles(store)
        return import_rows(read_events(path, parse_interaction), lambda events: add_interactions(profiles, events))


def feedback_key(event_id: str) -> str:
    """How a feedback event is named among the profile's events (interactions have their own names)."""
    return f"feedback:{event_id}"


def sync_feedback(profiles: Profiles) -> int:
    """Count the feedback events the profiles have not counted yet (each judged tag for its user);
    returns how many. Profiles are derived data: this rebuilds them from the feedback store."""
    rows = profiles.db.execute("SELECT 'feedback:' || event_id, user, action, tag, at FROM feedback WHERE "
                               "'feedback:' || event_id NOT IN (SELECT event_id FROM profile_events) ORDER BY seq").fetchall()
    return profiles.add_many((event_id, user, action, [tag], at) for event_id, user, action, tag, at in rows)
