"""The Product record every later stage reads, and the hashes that say when a product changed."""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

#: Fields a catalog row may carry; anything else goes to `extra` so nothing a user gave is lost.
PRODUCT_FIELDS = ("id", "title", "description", "image", "category", "tags", "language", "split", "extra")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_LETTER = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """'zh' when CJK characters outnumber Latin letters / 2 (a CJK char carries a word), else 'en'."""
    cjk = len(_CJK.findall(text))
    latin = len(_LETTER.findall(text))
    return "zh" if cjk and cjk * 2 >= latin else "en"


def _sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode("utf-8"))
        h.update(b"\x1f")  # separator, so ("ab", "c") and ("a", "bc") differ
    return h.hexdigest()[:20]


def encoder_text(title: str, description: str) -> str:
    """The exact string the text encoder sees; its hash is the text cache key."""
    return f"{title.strip()}. {description.strip()}" if description.strip() else title.strip()


@dataclass
class Product:
    """One catalog product.

    `image` is a path relative to the catalog's image root (never outside it) or None.
    `text_hash`/`image_hash` identify what each encoder sees; `content_hash` combines them,
    so any change a model could notice changes it, and nothing else does.
    """

    id: str
    title: str
    description: str = ""
    image: str | None = None
    category: str | None = None
    tags: list[str] = field(default_factory=list)
    language: str = ""
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    image_hash: str | None = None  # sha of the image file's bytes; set when the image was checked

    def __post_init__(self) -> None:
        if not self.language:
            self.language = detect_language(f"{self.title} {self.description}")

    @property
    def text(self) -> str:
        return encoder_text(self.title, self.description)

    @property
    def text_hash(self) -> str:
        return _sha("text", self.text)

    @property
    def content_hash(self) -> str:
        return _sha(self.text_hash, self.image_hash or "no-image")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["content_hash"] = self.content_hash
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Product":
        """Inverse of `to_dict`; derived fields (content_hash) are recomputed, not trusted."""
        known = {k: d[k] for k in (*PRODUCT_FIELDS, "image_hash") if k in d}
        return cls(**known)


def hash_bytes(data: bytes) -> str:
    """Content hash of an image file's bytes."""
    return _sha("image", data)
