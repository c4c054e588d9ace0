"""The ops page: ``GET /ui``, one self-contained HTML page (its body, CSS and
vanilla JS are the package files ``jobs/ui/assets/ops.html``, ``ops.css`` and
``ops.js``, inlined at start so that the CSP can pin their hashes; nothing is
fetched from elsewhere, no build step), and the JSON it
polls for queue-level numbers, ``GET /v1/ops/summary``.

The page reads everything else through the ordinary tenant API with the key
the user typed (kept in ``localStorage``): ``GET /v1/jobs``,
``GET /v1/webhooks/dead-letters``, ``POST /v1/webhooks/events/{id}/redeliver``
and ``GET /v1/jobs/{id}/deliveries``. Strings that callers control (custom ids,
metadata, errors, model names) only ever reach the page through
``textContent``; a Content-Security-Policy that admits just this page's own
script and style backs that up.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from jobs.domain import batches
from jobs.domain.statuses import JobStatus
from jobs.http.deps import Svc, Tenant
from jobs.observe import metrics
from jobs.services import Services

__all__ = ["OpsSummary", "router", "summary"]

router = APIRouter()


def _asset(name: str) -> str:
    """One of the page's files (``jobs/ui/assets/``): its HTML body, CSS and JS."""
    return resources.files("jobs.ui").joinpath("assets", name).read_text(encoding="utf-8")


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


@router.get("/v1/ops/summary", response_model=OpsSummary)
async def ops_summary(s: Svc, t: Tenant) -> OpsSummary:
    """Queue depth, jobs in flight by model, the oldest in-flight job's age and
    jobs by status (all tenants), and the caller's recent batches."""
    return await summary(s, t)


_STYLE = _asset("ops.css")

_SCRIPT = _asset("ops.js")

_BODY = _asset("ops.html")


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _page() -> tuple[str, str]:
    options = "".join(
        f'\n        <option value="{html.escape(st.value)}">{html.escape(st.value)}</option>'
        for st in JobStatus
    )
    body = _BODY.replace("__STATUS_OPTIONS__", options)
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n<title>interq ops</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>{body}<script>{_SCRIPT}</script>\n"
        "</body>\n</html>\n"
    )
    csp = (
        "default-src 'none'; "
        f"script-src 'sha256-{_sha256(_SCRIPT)}'; "
        f"style-src 'sha256-{_sha256(_STYLE)}'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, csp


PAGE, CSP = _page()


@router.get("/ui", include_in_schema=False)
async def ui() -> Response:
    """The ops page. It holds no data: everything is fetched with the key the
    user enters, so serving it needs no auth."""
    return Response(
        PAGE,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )
