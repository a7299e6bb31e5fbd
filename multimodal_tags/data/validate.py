"""Turn one raw catalog row into a Product, or say precisely what is wrong with it.

Errors reject the row; warnings keep it (e.g. an unusable photo: the product stays, text-only,
with the original reference kept in `extra` so nothing the user gave is lost).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .images import ImageError, check_image
from .schema import PRODUCT_FIELDS, Product

SPLITS = ("train", "val", "test")
LONE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # not a surrogate-escaped byte (dc80-dcff)


@dataclass
class Limits:
    """Bounds that protect the pipeline from pathological rows."""

    max_id_chars: int = 256  # an id is a key, not a text: longer ones are export errors
    max_title_chars: int = 2_000
    # Encoders read a few hundred tokens; a description this long is almost always a broken export.
    max_description_chars: int = 100_000
    max_tags: int = 500
    # the whole row, unknown columns included (they are kept in `extra`, and stored with every product)
    max_row_chars: int = 1_000_000
    check_images: bool = True  # read and fully decode every photo while validating
    strict_images: bool = False  # True: a bad photo rejects the row instead of dropping the photo


@dataclass
class Issue:
    """One problem found in one row: where it is, and why."""

    file: str
    row: int
    field: str
    reason: str
    severity: str = "error"  # "error": row rejected; "warning": row kept
    raw: str | None = None  # the original row text, for rejects, so it can be fixed and re-imported

    def __str__(self) -> str:
        kept = "row kept" if self.severity == "warning" else "row rejected"
        return f"{self.file}:{self.row}: {self.field}: {self.reason} ({kept})"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "field": self.field, "reason": self.reason,
                "severity": self.severity, "raw": self.raw}


def printable(text: str) -> str:
    """`text` with undecodable bytes (surrogate escapes) written as \\xNN and lone surrogates (from JSON
    escapes) as \\uNNNN: safe to write as UTF-8."""
    text = LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _bad_utf8(value: str) -> int | None:
    """Index of the first surrogate: an undecodable byte (read with errors='surrogateescape'), or a
    lone surrogate from a JSON escape such as \\ud800; None when the text is valid Unicode."""
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def _check_utf8(value: str) -> str:
    bad = _bad_utf8(value)
    if bad is not None:
        ch = value[bad]
        if "\udc80" <= ch <= "\udcff":
            raise ValueError(f"not valid UTF-8 (byte 0x{ord(ch) - 0xDC00:02x} at character {bad})")
        raise ValueError(f"not valid Unicode (a lone surrogate U+{ord(ch):04X} at character {bad})")
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return _check_utf8(value).strip()


def _as_id(value: Any, limits: Limits) -> str:
    """The id rule: text or a whole number; no invisible or control characters (two ids that look the
    same must be the same); at most `limits.max_id_chars`."""
    if isinstance(value, float):
        if not value.is_integer():  # 1.5, NaN, infinity
            raise ValueError(f"must be text or a whole number, got {value!r}")
        value = int(value)  # 12.0 from a numeric column is id 12
    pid = _as_text(value)
    if not pid:
        raise ValueError("missing or empty")
    if len(pid) > limits.max_id_chars:
        raise ValueError(f"{len(pid):,} characters, over the limit of {limits.max_id_chars:,}")
    hidden = [c for c in pid if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if hidden:
        raise ValueError(f"contains invisible or control characters ({', '.join(f'U+{ord(c):04X}' for c in hidden[:3])})")
    return pid


def _row_chars(raw: dict[str, Any]) -> int:
    return sum(len(str(k)) + (len(v) if isinstance(v, str) else len(str(v))) for k, v in raw.items())


def parse_tags(value: Any) -> list[str]:
    """Tags as a list, a JSON list string, or a '|'-separated string; blanks dropped, order kept."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError as e:
                raise ValueError(f"looks like a JSON list but does not parse ({e.msg})") from None
        else:
            value = s.split("|")
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of tags, got {type(value).__name__}")
    out = []
    for t in value:
        if t is not None and not isinstance(t, str):
            raise ValueError(f"each tag must be text (key:value), got {type(t).__name__} {t!r}")
        t = _as_text(t)
        if t and t not in out:
            out.append(t)
    return out


def _extra_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The row's `extra` (a dict, or JSON text of one) plus every unknown column: kept, not dropped."""
    extra = raw.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = {"extra": extra}
    if not isinstance(extra, dict):
        extra = {"extra": extra}
    for k, v in raw.items():
        if k not in PRODUCT_FIELDS and k not in ("image_hash", "content_hash") and v not in (None, ""):
            extra.setdefault(k, v)
    for k, v in extra.items():  # every string kept must be writable as UTF-8
        for text in (k, v):
            if isinstance(text, str):
                try:
                    _check_utf8(text)
                except ValueError as e:
                    raise ValueError(f"column {printable(str(k))!r}: {e}") from None
    return extra


def _length_issues(title: str, description: str, limits: Limits) -> list[tuple[str, str]]:
    out = []
    if len(title) > limits.max_title_chars:
        out.append(("title", f"{len(title):,} characters, over the limit of {limits.max_title_chars:,}"))
    if len(description) > limits.max_description_chars:
        out.append(("description", f"{len(description):,} characters, over the limit of "
                                   f"{limits.max_description_chars:,} (raise Limits.max_description_chars to accept)"))
    return out


def validate_row(raw: dict[str, Any], file: str, row: int, image_root: Path | None,
                 limits: Limits) -> tuple[Product | None, list[Issue]]:
    """Validate one row; return (product or None when rejected, issues found)."""
    issues: list[Issue] = []

    def err(field_name: str, reason: str) -> None:
        issues.append(Issue(file, row, field_name, reason))

    def text_field(name: str) -> str:
        try:
            return _as_text(raw.get(name))
        except ValueError as e:
            err(name, str(e))
            return ""

    try:
        pid = _as_id(raw.get("id"), limits)
    except ValueError as e:
        err("id", str(e))
        pid = ""
    title, description = text_field("title"), text_field("description")
    category, language = text_field("category") or None, text_field("language")
    split, image = text_field("split").lower() or None, text_field("image") or None
    for name, reason in _length_issues(title, description, limits):
        err(name, reason)
    if split is not None and split not in SPLITS:
        err("split", f"{split!r} is not one of {', '.join(SPLITS)}")
    try:
        tags = parse_tags(raw.get("tags"))
        if len(tags) > limits.max_tags:
            err("tags", f"{len(tags)} tags, over the limit of {limits.max_tags}")
    except ValueError as e:
        err("tags", str(e))
        tags = []
    try:
        extra = _extra_fields(raw)
    except ValueError as e:
        err("extra", str(e))
        extra = {}
    size = 0 if issues else _row_chars(raw)  # the fields' own limits are named first
    if size > limits.max_row_chars:
        err("row", f"{size:,} characters, over the limit of {limits.max_row_chars:,} "
                   f"(raise Limits.max_row_chars to accept)")
    if not (title or description or image) and not issues:
        err("title", "product has no title, no description and no image")
    if issues:
        return None, issues
    product = Product(id=pid, title=title, description=description, image=image, category=category,
                      tags=tags, language=language, split=split, extra=extra)
    return _check_photo(product, file, row, image_root, limits)


def _check_photo(product: Product, file: str, row: int, image_root: Path | None,
                 limits: Limits) -> tuple[Product | None, list[Issue]]:
    """Open the product's photo (when asked to): set its hash, or keep the product text-only with a
    warning (reject it when strict, or when it has no text either)."""
    if product.image is None or image_root is None or not limits.check_images:
        return product, []
    try:
        product.image_hash = check_image(product.image, image_root)
        return product, []
    except ImageError as e:
        if limits.strict_images or not (product.title or product.description):
            why = "" if limits.strict_images else "; the product has no text either"
            return None, [Issue(file, row, "image", f"{e}{why}")]
        product.extra["image_ref"], product.extra["image_error"] = product.image, str(e)
        product.image = None
        return product, [Issue(file, row, "image", f"{e}; photo dropped, product kept text-only", "warning")]
