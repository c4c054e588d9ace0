"""Pieces of the HTTP intake that are not routes: error bodies, the body size
limit, and the job view the API returns."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .models import ErrorResponse, JobView
from .store import Fields

__all__ = ["BodyLimit", "ErrorResponse", "api_error", "job_view"]


def api_error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


class _TooLarge(Exception):
    pass


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
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        resp = api_error(413, "body_too_large", f"request body is larger than {limit} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


def _opt_float(v: str | None) -> float | None:
    return float(v) if v else None


def _json(v: str | None) -> Any:
    return json.loads(v) if v else None


def job_view(job: Fields) -> JobView:
    return JobView(
        id=job["id"],
        status=job["status"],  # type: ignore[arg-type]
        upstream_status=job.get("upstream_status") or None,
        custom_id=job.get("custom_id") or None,
        batch_id=job.get("batch_id") or None,
        metadata=_json(job.get("metadata")),
        model=job.get("model") or None,
        created_at=float(job["created_at"]),
        updated_at=float(job.get("updated_at") or job["created_at"]),
        submitted_at=_opt_float(job.get("submitted_at")),
        finished_at=_opt_float(job.get("finished_at")),
        deadline=_opt_float(job.get("deadline")),
        interaction_id=job.get("interaction_id") or None,
        interaction_ids=_json(job.get("interaction_ids")) or [],
        possible_duplicate=job.get("possible_duplicate") == "1",
        poll_count=int(job.get("poll_count") or 0),
        error=_json(job.get("error")),
        usage=_json(job.get("usage")),
        output_text=job.get("output_text"),
        pending_calls=_json(job.get("pending_calls")),
        result_url=f"/v1/jobs/{job['id']}/result" if job.get("result_key") else None,
        webhook_url=job.get("webhook_url") or None,
        note=job.get("note") or None,
    )
