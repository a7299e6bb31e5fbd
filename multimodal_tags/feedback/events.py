"""Feedback events and their validation: one pydantic model, shared by `mmtags feedback import`, the
Python API and the service (which publishes it in its OpenAPI schema).

An event says that a `user` accepted, rejected or added a `tag` on a `product` at a `time`, having seen
the tags of model `model_id`, or retracted (undid) their own latest judgement of that tag. `event_id` is
the sender's: delivering the same event twice stores it once.

What an event cannot poison: a field it does not define is refused (no megabytes in an unknown field);
a tag is NFKC-normalised (full-width `Ｒｅｄ` is `Red`) and refused when it mixes Latin with Cyrillic or
Greek letters (look-alikes such as a Cyrillic `а` in `colour:blаck`); a time more than
`FUTURE_TOLERANCE_S` ahead of the receiver's clock is refused, and a time ahead within it counts as
the time received (`effective_time`), so no event is dated after the ones received later.
"""
from __future__ import annotations

import gzip
import json
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


ACTIONS = ("accept", "reject", "add", "retract")
MAX_TAG_CHARS = 200  # longer than any tag a shop uses; stops a pasted description becoming a tag
MAX_ID_CHARS = 256
MAX_EVENT_LINE_BYTES = 1 << 20  # a line of an event file longer than this is refused, not read whole
FUTURE_TOLERANCE_S = 300.0  # clocks of senders may run this far ahead of the receiver's
CONFUSABLE_SCRIPTS = {"LATIN", "CYRILLIC", "GREEK"}  # letters that look alike across these scripts
FORBIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # Unicode categories an id or a tag may not contain


def _clean_text(value: Any, what: str) -> str:
    """Text without surrounding space and without control characters (numbers as ids are text)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{what} must be text")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{what} is empty")
    bad = next((c for c in text if unicodedata.category(c) in FORBIDDEN), None)
    if bad is not None:  # control and format characters, and lone surrogates (not storable as UTF-8)
        raise ValueError(f"{what} has a character that is not printable text (U+{ord(bad):04X})")
    return text


def _text_field(cls, value: Any, info) -> str:
    return _clean_text(value, info.field_name)


def _scripts(text: str) -> set[str]:
    return {unicodedata.name(c, "?").split()[0] for c in text if c.isalpha()}


def clean_tag(value: Any, what: str = "tag") -> str:
    """A tag as it is compared and stored: NFKC-normalised printable text, not mixing look-alike scripts."""
    text = unicodedata.normalize("NFKC", _clean_text(value, what))
    mixed = _scripts(text) & CONFUSABLE_SCRIPTS
    if len(mixed) > 1:
        raise ValueError(f"{what} mixes {' and '.join(sorted(s.title() for s in mixed))} letters "
                         "(a look-alike of another tag?)")
    return text


def _tag_field(cls, value: Any, info) -> str:
    return clean_tag(value, info.field_name)


def time_refusal(time_sent: float | None, now: float, tolerance_s: float = FUTURE_TOLERANCE_S) -> str | None:
    """Why an event's time cannot be taken (more than `tolerance_s` ahead of `now`), or None."""
    if time_sent is not None and time_sent > now + tolerance_s:
        ahead = time_sent - now
        return f"time: {ahead:,.0f} s ahead of the receiver's clock (at most {tolerance_s:,.0f} s are tolerated)"
    return None


def effective_time(time_sent: float | None, now: float) -> float:
    """The time an event counts at: its own, but never after it was received."""
    return now if time_sent is None else min(time_sent, now)


def _utc_time(cls, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # a time without zone is UTC
    return value


class FeedbackEvent(BaseModel):
    """One judgement of one tag. A field the model does not define is refused."""

    model_config = ConfigDict(extra="forbid", str_max_length=4096)

    event_id: str = Field(max_length=MAX_ID_CHARS, description="the sender's id: a redelivery is stored once")
    user: str = Field(max_length=MAX_ID_CHARS)
    product: str = Field(max_length=MAX_ID_CHARS, description="a product id the tag store knows")
    tag: str = Field(max_length=MAX_TAG_CHARS)
    action: Literal["accept", "reject", "add", "retract"] = Field(
        description="retract: withdraw this user's latest standing judgement of the tag on the product (undo)")
    time: datetime | None = Field(None, description="ISO 8601 or Unix seconds; default: when received")
    model_id: str | None = Field(None, max_length=MAX_ID_CHARS, description="the model whose tags were judged")

    _text = field_validator("event_id", "user", "product", mode="before")(classmethod(_text_field))
    _tag = field_validator("tag", mode="before")(classmethod(_tag_field))

    @field_validator("model_id", mode="before")
    @classmethod
    def _optional_text(cls, value: Any, info) -> str | None:
        return None if value is None else _clean_text(value, info.field_name)

    _utc = field_validator("time")(classmethod(_utc_time))

    def unix_time(self, default: float) -> float:
        return self.time.timestamp() if self.time is not None else default


def explain(error: ValidationError) -> str:
    """A ValidationError as one line naming each bad field: `tag: String should have at most 200 characters`."""
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"]) or "event"
        parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _parse(model: type[BaseModel], raw: Any, what: str) -> Any:
    """`model` from a decoded JSON value; ValueError with a one-line reason naming the field."""
    if not isinstance(raw, dict):
        raise ValueError(f"{what} is a JSON object, not {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ValueError(explain(e)) from None


def parse_event(raw: Any) -> FeedbackEvent:
    """An event from a decoded JSON value; ValueError with a one-line reason naming the field."""
    return _parse(FeedbackEvent, raw, "an event")


def _lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(row, text, None) or (row, None, reason) for each line of a JSONL or JSONL.gz file: a line over
    MAX_EVENT_LINE_BYTES is skipped without being held in memory, bytes that are not UTF-8 are reported."""
    opener = gzip.open if path.name.endswith(".gz") else open
    row = 0
    with opener(path, "rb") as f:
        while line := f.readline(MAX_EVENT_LINE_BYTES + 1):
            row += 1
            if len(line) > MAX_EVENT_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass  # the rest of the long line, a piece at a time
                yield row, None, f"longer than {MAX_EVENT_LINE_BYTES:,} bytes (skipped)"
                continue
            try:
                yield row, line.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield row, None, f"not UTF-8: byte 0x{line[e.start]:02x} at column {e.start + 1}"


def read_events(path: str | Path, parse: Callable[[Any], BaseModel] = parse_event
                ) -> Iterator[tuple[int, Any, str | None]]:
    """(row number, parsed, None) or (row number, None, reason) for each non-blank line of a JSONL file,
    `.gz` too (`parse`: parse_event, or parse_interaction). Only a regular file is read (a pipe would
    hang); a damaged `.gz` ends with a row naming where the damage starts."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    row = 0
    try:
        for row, text, reason in _lines(path):
            if reason or not text.strip():
                if reason:
                    yield row, None, reason
                continue
            try:
                yield row, parse(json.loads(text)), None
            except json.JSONDecodeError as e:
                yield row, None, f"not JSON ({e.msg} at column {e.colno})"
            except ValueError as e:
                yield row, None, str(e)
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz: the rows before it count
        yield row + 1, None, f"file: damaged from here on ({e})"


class Interaction(BaseModel):
    """A user's purchase or click of a product: counted in their profile over the product's tags."""

    model_config = ConfigDict(extra="forbid", str_max_length=4096)

    event_id: str = Field(max_length=MAX_ID_CHARS, description="the sender's id: a redelivery counts once")
    user: str = Field(max_length=MAX_ID_CHARS)
    product: str = Field(max_length=MAX_ID_CHARS, description="a product id the tag store knows")
    kind: Literal["purchase", "click"]
    time: datetime | None = Field(None, description="ISO 8601 or Unix seconds; default: when received")

    _text = field_validator("event_id", "user", "product", mode="before")(classmethod(_text_field))
    _utc = field_validator("time")(classmethod(_utc_time))

    def unix_time(self, default: float) -> float:
        return self.time.timestamp() if self.time is not None else default

    def content(self) -> str:
        """What a redelivery of this event_id must repeat."""
        return json.dumps([self.user, self.product, self.kind, None if self.time is None else self.unix_time(0)])


def parse_interaction(raw: Any) -> Interaction:
    """An interaction from a decoded JSON value; ValueError with a one-line reason naming the field."""
    return _parse(Interaction, raw, "an interaction")
