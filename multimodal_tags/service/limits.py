"""Request body limits, as ASGI middleware: 413 before the app reads an oversized body, 408 when the
body arrives too slowly (a client that sends a byte a minute holds a connection for nothing)."""
from __future__ import annotations

import asyncio
import json
import threading
import time


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class BodyLimit:
    """Refuse bodies over `max_bytes` (at once by Content-Length, or while streaming a chunked body), and
    bodies whose next part takes longer than `read_timeout_s` to arrive."""

    def __init__(self, app, max_bytes: int, read_timeout_s: float = 30.0):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        try:
            if length is not None and int(length) > self.max_bytes:
                return await self._refuse(send, 413, f"body: {int(length):,} bytes, over the limit of {self.max_bytes:,}")
        except ValueError:
            return await self._refuse(send, 400, "content-length: not a number")
        seen, started, body_done = 0, False, False
        refusal: tuple[int, str] | None = None  # set when the body broke a limit

        async def limited_receive():
            nonlocal seen, body_done, refusal
            if body_done:  # after the body, the app may wait for a disconnect as long as it likes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except asyncio.TimeoutError:
                refusal = (408, f"body: no data for {self.read_timeout_s:g} s")
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    refusal = (413, f"body: over the limit of {self.max_bytes:,} bytes")
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if refusal is not None:  # the app caught our exception (FastAPI makes it a 400): say what it was
                if not started:
                    started = True
                    await self._refuse(send, *refusal)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (_TooLarge, _TooSlow):
            if not started:
                await self._refuse(send, *refusal)

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """A token bucket per client: `rate` requests a second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate, self.burst = rate, burst or max(1.0, 2 * rate)
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self.lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """0 when `client` may go now (a token is taken), else how many seconds until it may."""
        now = time.monotonic()
        with self.lock:
            tokens, then = self.buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self.buckets[client] = (tokens - 1, now)
                return 0.0
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


def uvicorn_limits(keep_alive_s: float = 5.0, max_connections: int = 256) -> dict:
    """uvicorn settings that bound what connections can hold: an idle keep-alive connection is closed
    after `keep_alive_s`; past `max_connections` connections (or requests in flight) a request gets a
    503 instead of a file handle each; request heads over 64 KiB are refused."""
    return {"timeout_keep_alive": keep_alive_s, "limit_concurrency": max_connections,
            "h11_max_incomplete_event_size": 64 * 1024}
