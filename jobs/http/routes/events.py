"""Watching without polling: ``GET /v1/jobs/{id}/events`` and
``GET /v1/batches/{id}/events`` (Server-Sent Events, resumable with
``Last-Event-ID``; what they send: ``jobs/http/sse.py``), and the ``?wait=``
of ``GET /v1/jobs/{id}`` and ``GET /v1/batches/{id}`` (``waited_job``,
``waited_batch``: the same answer, given once the status changes, at once if
it is final, or after ``wait`` seconds).

Every watcher of the process waits on the one subscription of the process's
``Hub`` (``jobs/http/watch.py``), started and stopped by this router's
lifespan. Another tenant's object is a 404, as for a GET."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from sse_starlette import EventSourceResponse

from jobs.domain import batches
from jobs.domain.records import Job
from jobs.domain.statuses import TERMINAL
from jobs.http import live, sse
from jobs.http.deps import Svc, Tenant, own_batch, own_job
from jobs.http.views import errors
from jobs.http.watch import Hub, wait_for
from jobs.services import Services
from jobs.storage import changes
from jobs.upstream.stream import LiveStream, Relays

MAX_WAIT_S = 60.0
Wait = Annotated[
    float | None,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description="Answer once the status changes (at once if it is final), or after "
        "this many seconds (at most 60) with the same body",
    ),
]
LastEventId = Annotated[
    str | None,
    Header(
        max_length=64,
        description="Resume after this event id: only the changes after it are sent",
    ),
]
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A stream of Server-Sent Events (see the route's description)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The process's one subscription, inside the app's lifespan (its services)."""
    s: Services = app.state.svc
    hub = Hub(s.redis, s.store.keys.changes_channel)
    hub.start()
    app.state.watch_hub = hub
    app.state.relays = Relays(LiveStream(s.settings)) if s.settings.live_output else None
    try:
        yield
    finally:
        await hub.stop()
        if app.state.relays is not None:
            await app.state.relays.aclose()


router = APIRouter(responses=errors(401, 422, 429, 503), lifespan=lifespan)


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.watch_hub
    return hub


def respond(events: AsyncIterator[Any]) -> EventSourceResponse:
    # no ping task of the library's: the generators send the heartbeat themselves
    return EventSourceResponse(events, ping=0, headers={"Cache-Control": "no-store"})


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**STREAM, **errors(404)},
)
async def job_events(
    job_id: str, request: Request, s: Svc, t: Tenant, last_event_id: LastEventId = None
) -> EventSourceResponse:
    """The job's changes as they happen: ``job`` (the job, as ``GET`` returns
    it), then ``status`` (``{id, status, previous, at}``) for each change, and a
    last ``job`` after the final status; then the stream ends. While it runs,
    ``output`` (the partial text so far) and ``delta`` (the next piece) events
    relay the upstream's own output (``jobs/http/live.py``). With
    ``Last-Event-ID``: only the ``status`` events after that id. A comment
    line comes every ``INTERQ_WATCH_HEARTBEAT_S`` while nothing happens."""
    job = await own_job(s, t, job_id)
    resume = changes.valid_id(last_event_id)
    events = sse.job_events(s, hub_of(request), job, resume)
    return respond(live.with_live_output(s, request.app.state.relays, job.id, events))


@router.get(
    "/v1/batches/{batch_id}/events",
    response_class=EventSourceResponse,
    responses={**STREAM, **errors(404)},
)
async def batch_events(
    batch_id: str, request: Request, s: Svc, t: Tenant, last_event_id: LastEventId = None
) -> EventSourceResponse:
    """The batch's changes as they happen: ``batch`` (as ``GET`` returns it),
    ``status`` for each change of its status, ``counts`` (``{id, total, done,
    counts}``) at most once per ``INTERQ_WATCH_COUNTS_INTERVAL_S`` while jobs
    end, and a last ``batch`` after its final status; then the stream ends.
    With ``Last-Event-ID``: the ``status`` events after that id, then the
    current counts."""
    batch = await own_batch(s, t, batch_id)
    resume = changes.valid_id(last_event_id)
    return respond(sse.batch_events(s, hub_of(request), batch, resume))


async def _until_change(
    s: Services, hub: Hub, ref: str, stream: str, last: str, wait: float
) -> None:
    """Return once ``stream`` has an entry after ``last``, or after ``wait`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with hub.waiter(ref) as woken:
        while (left := deadline - loop.time()) > 0:
            woken.clear()
            found, gap = await changes.after(s.redis, stream, last)
            if found or gap:
                return
            await wait_for(woken, min(left, s.settings.watch_heartbeat_s))


async def waited_job(request: Request, s: Services, t: str, job_id: str, wait: float | None) -> Job:
    """``GET /v1/jobs/{id}?wait=``: the job once its status changed (at once
    if it is final), or after ``wait`` seconds."""
    job = await own_job(s, t, job_id)
    if not wait or job.status in TERMINAL:
        return job
    fresh, last = await sse.job_snapshot(s, job_id)
    if fresh is None or fresh.status in TERMINAL:
        return await own_job(s, t, job_id)
    stream = s.store.keys.job_changes(job_id)
    await _until_change(s, hub_of(request), f"job:{job_id}", stream, last, wait)
    return await own_job(s, t, job_id)


async def waited_batch(
    request: Request, s: Services, t: str, batch_id: str, wait: float | None
) -> dict[str, Any]:
    """``GET /v1/batches/{id}?wait=``: the batch view once its status changed
    (at once if it is final), or after ``wait`` seconds."""
    batch = await own_batch(s, t, batch_id)
    if wait and batch.status not in sse.BATCH_TERMINAL:
        stream = s.store.keys.batch_changes(batch_id)
        last = await changes.latest(s.redis, stream)
        batch = await own_batch(s, t, batch_id)
        if batch.status not in sse.BATCH_TERMINAL:
            await _until_change(s, hub_of(request), f"batch:{batch_id}", stream, last, wait)
            batch = await own_batch(s, t, batch_id)
    return await batches.batch_view(s, batch)
