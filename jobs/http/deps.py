"""Pieces of the HTTP intake that are not routes: error bodies, the body size
limit, and the job view the API returns."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from limits import RateLimitItemPerSecond
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.domain.records import Job
from jobs.services import Services

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
