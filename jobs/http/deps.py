"""The routes' dependencies: the services (``Svc``), the caller's tenant
(``Tenant``: bearer auth and the per-tenant request limit), and the lookups
that answer 404 for another tenant's job, batch or event (``own_job``,
``own_batch``, ``own_event``). Each lookup first checks the id's form
(``jobs/domain/ids.py``): an id interq could not have minted is answered as an
unknown one, before any Redis key is built from it.

``bearer`` is FastAPI's ``HTTPBearer`` without its own check: it puts the
bearer security scheme in the OpenAPI schema; ``tenant`` does the checking."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItemPerSecond

from jobs.domain import batches, ids
from jobs.domain.records import Batch, Event, Job
from jobs.errors import NotFound, RateLimited, Unauthorized
from jobs.services import Services

DEFAULT_TENANT = "default"
bearer = HTTPBearer(
    auto_error=False,
    description="An API key of INTERQ_API_KEYS; none configured: no auth (one tenant).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def svc(request: Request) -> Services:
    """The process's services (async: a plain ``def`` dependency costs a
    thread hop per request)."""
    s: Services = request.app.state.svc
    return s


async def tenant(request: Request, _: Credentials) -> str:
    """The caller's tenant from its bearer key (401 if unknown), within its
    request rate (429 with Retry-After past ``INTERQ_TENANT_REQUESTS_PER_S``)."""
    s: Services = request.app.state.svc
    cfg = s.settings
    authorization = request.headers.get("authorization")
    if not cfg.api_keys:
        t = DEFAULT_TENANT
    else:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing 'Authorization: Bearer <key>'")
        found = cfg.tenant_for_key(authorization[7:].strip())
        if found is None:
            raise Unauthorized("unknown API key")
        t = found
    if cfg.tenant_requests_per_s:
        item = RateLimitItemPerSecond(cfg.tenant_requests_per_s, 1)
        if not await s.budgets.limiter.hit(item, "tenant", t):
            raise RateLimited("too many requests for this tenant", headers={"Retry-After": "1"})
    return t


Svc = Annotated[Services, Depends(svc)]


Tenant = Annotated[str, Depends(tenant)]


def shown(given_id: str, most: int = 80) -> str:
    """A caller's id as an error message quotes it: its repr, cut to ``most``
    characters (an id of 10,000 characters is not sent back whole)."""
    text = repr(given_id)
    return text if len(text) <= most else text[: most - 3] + "..."


async def own_job(s: Services, t: str, job_id: str) -> Job:
    """The job if it exists and belongs to tenant ``t``; 404 otherwise (another
    tenant's job does not exist for this caller)."""
    job = await s.store.get_job(job_id) if ids.is_job_id(job_id) else None
    if job is None or job.tenant != t:
        raise NotFound(f"no job {shown(job_id)}")
    return job


async def own_batch(s: Services, t: str, batch_id: str) -> Batch:
    """The batch if it exists and belongs to tenant ``t``; 404 otherwise."""
    batch = await batches.get_batch(s, t, batch_id) if ids.is_batch_id(batch_id) else None
    if batch is None:
        raise NotFound(f"no batch {shown(batch_id)}")
    return batch


async def own_event(s: Services, t: str, event_id: str) -> Event:
    """The webhook event if it exists and belongs to tenant ``t``; 404 otherwise."""
    ev = await s.store.get_event(event_id) if ids.is_event_id(event_id) else None
    if ev is None or ev.tenant != t:
        raise NotFound(f"no event {shown(event_id)}")
    return ev
