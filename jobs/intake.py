"""Pieces of the HTTP intake that are not routes: error bodies, the body size
limit, and the job view the API returns."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItemPerSecond
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .models import ErrorResponse, JobView
from .records import Job
from .services import Services

__all__ = ["DEFAULT_TENANT", "BodyLimit", "ErrorResponse", "Svc", "Tenant", "api_error", "job_view"]

DEFAULT_TENANT = "default"


def svc(request: Request) -> Services:
    s: Services = request.app.state.svc
    return s


async def tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's tenant from its bearer key (401 if unknown), within its
    request rate (429 with Retry-After past ``INTERQ_TENANT_REQUESTS_PER_S``)."""
    s: Services = request.app.state.svc
    cfg = s.settings
    if not cfg.api_keys:
        t = DEFAULT_TENANT
    else:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise StarletteHTTPException(401, "missing 'Authorization: Bearer <key>'")
        found = cfg.tenant_for_key(authorization[7:].strip())
        if found is None:
            raise StarletteHTTPException(401, "unknown API key")
        t = found
    if cfg.tenant_requests_per_s:
        item = RateLimitItemPerSecond(cfg.tenant_requests_per_s, 1)
        if not await s.budgets.limiter.hit(item, "tenant", t):
            raise StarletteHTTPException(
                429, "too many requests for this tenant", headers={"Retry-After": "1"}
            )
    return t


Svc = Annotated[Services, Depends(svc)]
Tenant = Annotated[str, Depends(tenant)]


async def own_job(s: Services, t: str, job_id: str) -> Job:
    """The job if it exists and belongs to tenant ``t``; 404 otherwise (another
    tenant's job does not exist for this caller)."""
    job = await s.store.get_job(job_id) if len(job_id) <= 64 else None
    if job is None or job.tenant != t:
        raise StarletteHTTPException(404, f"no job {job_id!r}")
    return job


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


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        upstream_status=job.upstream_status or None,
        custom_id=job.custom_id or None,
        batch_id=job.batch_id or None,
        metadata=job.metadata,
        model=job.model or None,
        created_at=job.created_at,
        updated_at=job.updated_at or job.created_at,
        submitted_at=job.submitted_at,
        finished_at=job.finished_at,
        deadline=job.deadline or None,
        interaction_id=job.interaction_id or None,
        interaction_ids=job.interaction_ids,
        possible_duplicate=job.possible_duplicate,
        poll_count=job.poll_count,
        error=job.error,
        usage=job.usage,
        output_text=job.output_text,
        pending_calls=job.pending_calls,
        result_url=f"/v1/jobs/{job.id}/result" if job.result_key else None,
        webhook_url=job.webhook_url or None,
        note=job.note or None,
    )
