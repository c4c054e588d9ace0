"""ASGI middleware of the intake: ``BodyLimit``, the request body size limit.

It runs before routing, so it answers the 413 ``body_too_large`` itself (the
JSON error body of ``jobs/http/errors.py``); routes never see an oversized
body. The limit is ``INTERQ_MAX_BODY_BYTES``, with a larger one for a path
prefix (``/v1/batches``: ``INTERQ_MAX_BATCH_BYTES``). A body without a
Content-Length (chunked) is counted as it is read: past the limit the read
raises ``BodyTooLarge`` (``jobs/errors.py``), caught here and answered 413 if
no response has started.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import BodyTooLarge, TooLarge
from jobs.http.errors import render


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not the
    client sent a Content-Length."""

    def __init__(self, app: ASGIApp, max_bytes: int, large: tuple[str, int] = ("", 0)) -> None:
        self.app = app
        self.default_max = max_bytes
        self.large_prefix, self.large_max = large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        large = bool(self.large_prefix) and scope["path"].startswith(self.large_prefix)
        limit = self.large_max if large else self.default_max
        await self._limited(scope, receive, send, limit)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send, limit)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        resp = render(TooLarge(f"request body is larger than {limit} bytes"))
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})
