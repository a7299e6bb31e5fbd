"""API keys of the service: named clients, each with scopes, from one key file.

The key file (`mmtags serve --api-key-file FILE`) holds one client per line, `#` starts a comment:

    # name      scopes               key (16 characters or more)
    shop-etl    write                4f0c1d9e8b7a6f5e4d3c2b1a
    ann         read,review          b7e2a9c4d1f8e3a6c5b0d9f2
    dashboard   read                 9a8b7c6d5e4f3a2b1c0d9e8f

Scopes: `read` (a product's stored tags, a user's ranking and recommendations, statistics), `write`
(tag products, post interactions and feedback), `review` (post feedback as the named reviewer; the
review page). A file holding one bare key (the old format) is one client, `default`, with every scope.
A file that holds no key, a key under 16 characters, an unknown scope or a key given twice is refused
when the service starts, naming the file and line. Keys are compared in constant time.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("read", "write", "review")
MIN_KEY_LENGTH = 16


class KeyFileError(ValueError):
    """A key file the service refuses to start with."""


@dataclass(frozen=True)
class Client:
    name: str
    scopes: frozenset[str]


class KeyRing:
    """The clients a service knows, by key."""

    def __init__(self, clients: dict[str, Client]):
        if not clients:
            raise KeyFileError("no API key given")
        self._clients = clients

    @classmethod
    def single(cls, key: str, name: str = "default", where: str = "the key") -> "KeyRing":
        """One client with every scope (tests, and the old one-key file)."""
        _check_key(key, where)
        return cls({key: Client(name, frozenset(SCOPES))})

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        """The clients of a key file (format: this module's docstring)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFileError(f"{path}: cannot read the key file ({e})") from None
        lines = [(n, line.split("#", 1)[0].split()) for n, line in enumerate(text.splitlines(), 1)]
        lines = [(n, parts) for n, parts in lines if parts]
        if not lines:
            raise KeyFileError(f"{path}: holds no API key (an empty key file would leave the service open)")
        if len(lines) == 1 and len(lines[0][1]) == 1:  # the old format: one bare key
            return cls.single(lines[0][1][0], where=f"{path}:{lines[0][0]}")
        clients: dict[str, Client] = {}
        for n, parts in lines:
            where = f"{path}:{n}"
            if len(parts) != 3:
                raise KeyFileError(f"{where}: expected `name scopes key`, got {len(parts)} fields")
            name, scopes, key = parts
            _check_key(key, where)
            wanted = frozenset(s.strip() for s in scopes.split(",") if s.strip())
            if not wanted or wanted - set(SCOPES):
                raise KeyFileError(f"{where}: scopes {scopes!r}: choose from {', '.join(SCOPES)}")
            if key in clients or name in {c.name for c in clients.values()}:
                raise KeyFileError(f"{where}: client {name!r} or its key is given twice")
            clients[key] = Client(name, wanted)
        return cls(clients)

    def client(self, key: str | None) -> Client | None:
        """The client holding `key` (None for no or a wrong key); every key is compared, in constant time."""
        found = None
        for known, client in self._clients.items():
            if key is not None and hmac.compare_digest(known.encode(), key.encode()):
                found = client
        return found


def _check_key(key: str, where: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise KeyFileError(f"{where}: an API key must have at least {MIN_KEY_LENGTH} characters "
                           f"(this one has {len(key)})")
