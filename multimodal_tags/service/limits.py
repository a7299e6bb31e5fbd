"""A request body size limit, as ASGI middleware: 413 before the app reads an oversized body."""
from __future__ import annotations

import json


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse bodies over `max_bytes`: at once by Content-Length, or while streaming a chunked body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        try:
            if length is not None and int(length) > self.max_bytes:
                return await self._refuse(send, 413, f"body: {int(length):,} bytes, over the limit of {self.max_bytes:,}")
        except ValueError:
            return await self._refuse(send, 400, "content-length: not a number")
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, 413, f"body: over the limit of {self.max_bytes:,} bytes")

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
