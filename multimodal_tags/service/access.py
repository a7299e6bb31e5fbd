"""Who may call a route: the API key's client and scopes (service/auth.py), its rate limit, and replies
that never name a server path."""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from .runtime import ServiceConfig


#: The review page's key, set by POST /review/login: HttpOnly (no script reads it) and SameSite=Strict
#: (no other site's page sends it), for the page's own routes under /review only.
KEY_COOKIE = "mmtags_key"


def guard(cfg: ServiceConfig, *scopes: str, cookie: bool = False) -> list:
    """The dependency of a route that needs a key with one of `scopes` (when the service has keys); the
    client is left in request.state.client. With `cookie`, the review page's cookie holds the key too."""
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    def check(request: Request, key: str | None = Depends(key_header)) -> None:
        if key is None and cookie:
            key = request.cookies.get(KEY_COOKIE)
        request.state.client = None
        if cfg.keys is None:
            rate_limit(cfg, request.client.host if request.client else "anonymous")
            return
        client = cfg.keys.client(key)
        if client is None:
            raise HTTPException(401, "this endpoint needs an API key in the X-API-Key header")
        if not client.scopes & set(scopes):
            raise HTTPException(403, f"the key of {client.name!r} lacks the scope this endpoint needs "
                                     f"({' or '.join(scopes)})")
        request.state.client = client
        rate_limit(cfg, client.name)
    return [Depends(check)]


def rate_limit(cfg: ServiceConfig, who: str) -> None:
    """429 with Retry-After when `who` (a client's name, or an address without keys) is over its rate."""
    if cfg.limiter is not None and (wait := cfg.limiter.wait_s(who)) > 0:
        raise HTTPException(429, f"over {cfg.limiter.rate:g} requests a second for {who!r}; retry later",
                            headers={"Retry-After": str(max(1, round(wait)))})


def without_server_paths(text: str, cfg: ServiceConfig) -> str:
    """`text` with every folder of the server (image root, uploads, store, model, cache) named by its role."""
    roles = {"<image root>": cfg.image_root, "<uploads>": cfg.uploads, "<store folder>": cfg.store_path.parent,
             "<model>": cfg.model_dir, "<cache>": cfg.cache_dir}
    paths = [(str(form), role) for role, p in roles.items() if p is not None
             for form in {Path(p), Path(p).resolve(), Path(p).absolute()} if len(str(form)) > 1]
    for path, role in sorted(paths, key=lambda x: -len(x[0])):  # the longest first: nested folders
        text = text.replace(json.dumps(path)[1:-1], role)
    return text
