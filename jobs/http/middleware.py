"""ASGI middleware of the intake: ``BodyLimit``, the request body size limit.

It runs before routing, so it answers the 413 ``body_too_large`` itself (the
JSON error body of ``jobs/http/errors.py``); routes never see an oversized
body. The limit is ``INTERQ_MAX_BODY_BYTES``, with a larger one for a path
prefix (``/v1/batches``: ``INTERQ_MAX_BATCH_BYTES``). A body without a
Content-Length (chunked) is counted as it is read: past the limit the read
raises ``BodyTooLarge`` (``jobs/errors.py``). Whatever the app makes of that
(FastAPI turns any error while it reads a body into its own 400 "There was an
error parsing the body"; a streaming route may catch it), the answer it then
starts is replaced by the same 413 a Content-Length over the limit gets, and
the rest of what it sends is dropped. Only a response that started before the
limit was passed goes on as it was.
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
        over = False  # the body passed the limit
        started = False  # a response has started (the app's, or our 413)
        replaced = False  # the app's answer is being replaced by the 413

        async def limited_receive() -> Message:
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    over = True
                    raise BodyTooLarge
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started, replaced
            if msg["type"] == "http.response.start":
                replaced = over and not started
                started = True
                if replaced:
                    await self._refuse(send, limit)
                    return
            if not replaced:
                await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        resp = render(TooLarge(f"request body is larger than {limit} bytes"))
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})
