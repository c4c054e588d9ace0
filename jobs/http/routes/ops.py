"""The operator routes: ``/healthz`` (the process is up), ``/readyz`` (Redis
answers and takes writes), ``/metrics`` (Prometheus) and
``/v1/ops/summary`` (the numbers the ops page at ``/ui`` polls)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from jobs.domain import batches
from jobs.http import errors as http_errors
from jobs.http.deps import Svc, Tenant
from jobs.http.views import errors
from jobs.observe import metrics
from jobs.services import Services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503))
async def readyz(request: Request, s: Svc) -> Any:
    """Ready while Redis answers and takes writes; 503 with a ``detail``
    (readonly, oom, loading, connection, timeout) otherwise."""
    return await http_errors.readiness(request.app.state.probe, s.store.keys)


@router.get("/metrics", responses=errors(503))
async def prom(s: Svc) -> Response:
    await metrics.refresh_queue_gauges(s.redis, s.store.keys)
    body = generate_latest() + generate_latest(metrics.QUEUE_REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# How far back the summary looks in the tenant's job index for batches to show.
RECENT_JOBS_FOR_BATCHES = 200
MAX_BATCHES = 8


class OpsSummary(BaseModel):
    tenant: str
    time: float
    queue_depth: int
    """Jobs accepted and waiting for dispatch, all tenants."""
    queue_depth_tenant: int
    """The caller's share of ``queue_depth``."""
    in_flight: dict[str, int]
    """Jobs dispatched and not yet ended, by model label (as in ``/metrics``)."""
    in_flight_total: int
    oldest_in_flight_s: float | None
    jobs_by_status: dict[str, int]
    """Jobs stored, by status, all tenants."""
    batches: list[dict[str, Any]]
    """The caller's batches among its most recent jobs, newest first, as
    ``GET /v1/batches/{id}`` returns them."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def summary(s: Services, tenant: str) -> OpsSummary:
    """The numbers ``jobs.metrics.refresh_queue_gauges`` exports, from the same
    Redis keys, plus the tenant's recent batches."""
    snap = await metrics.queue_snapshot(s.redis, s.store.keys)
    mine = sum(n for lane, n in snap.lane_depths.items() if lane.split("|", 1)[0] == tenant)
    in_flight = {m: n for m, n in snap.in_flight.items() if n}
    return OpsSummary(
        tenant=tenant,
        time=time.time(),
        queue_depth=sum(snap.lane_depths.values()),
        queue_depth_tenant=mine,
        in_flight=dict(sorted(in_flight.items())),
        in_flight_total=sum(in_flight.values()),
        oldest_in_flight_s=snap.oldest_in_flight_s,
        jobs_by_status=snap.by_status,
        batches=await recent_batches(s, tenant),
    )


async def recent_batches(s: Services, tenant: str) -> list[dict[str, Any]]:
    """Batches found through the ``batch_id`` of the tenant's most recent jobs
    (there is no per-tenant batch index): one ZREVRANGE, one pipelined HGET
    per job, then each batch's view."""
    r = s.redis
    recent = await r.zrevrange(s.store.keys.tenant_jobs(tenant), 0, RECENT_JOBS_FOR_BATCHES - 1)
    ids = [_s(x) for x in recent]
    if not ids:
        return []
    async with r.pipeline(transaction=False) as pipe:
        for jid in ids:
            pipe.hget(s.store.keys.job(jid), "batch_id")
        found = await pipe.execute()
    seen: list[str] = []
    for b in found:
        bid = _s(b) if b else ""
        if bid and bid not in seen:
            seen.append(bid)
            if len(seen) == MAX_BATCHES:
                break
    out = []
    for bid in seen:
        batch = await batches.get_batch(s, tenant, bid)
        if batch is not None:
            out.append(await batches.batch_view(s, batch))
    return out


@router.get("/v1/ops/summary", response_model=OpsSummary, responses=errors(401, 429, 503))
async def ops_summary(s: Svc, t: Tenant) -> OpsSummary:
    """Queue depth, jobs in flight by model, the oldest in-flight job's age and
    jobs by status (all tenants), and the caller's recent batches."""
    return await summary(s, t)
