"""What a watcher of a job or a batch is sent, and ``?wait=``: the readers and
the event generators behind ``jobs/http/routes/events.py``.

A job's stream: a ``job`` event (the job as ``GET /v1/jobs/{id}`` returns it)
first, then one ``status`` event per change of status (``{id, status,
previous, at}``), and after the terminal one a last ``job`` event; then the
stream ends. A batch's: ``batch`` (as ``GET /v1/batches/{id}``), ``status``
events, ``counts`` events (``{id, total, done, counts}``, at most one per
``INTERQ_WATCH_COUNTS_INTERVAL_S``, only when they changed), and after its
terminal status a last ``batch``. Every event's id is the change stream's
last entry id at that point: a client that reconnects with ``Last-Event-ID``
gets the ``status`` events after it (and a batch's current counts), no
snapshot first unless some of them were trimmed away. An idle stream gets a
comment line every ``INTERQ_WATCH_HEARTBEAT_S``.

Seam: a ``delta`` event (partial output relayed from the upstream) would be
another kind of entry in the job's change stream, sent here as it is read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from jobs.domain import batches
from jobs.domain.records import Batch, Job
from jobs.domain.statuses import TERMINAL
from jobs.http.views import job_view
from jobs.http.watch import Hub, wait_for
from jobs.services import Services
from jobs.storage import changes
from jobs.storage.changes import START

BATCH_TERMINAL = frozenset({"completed", "cancelled"})
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def event(kind: str, data: Any, last: str) -> ServerSentEvent:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ServerSentEvent(data=text, event=kind, id=last)


async def job_snap(s: Services, job_id: str) -> tuple[str, str, str] | None:
    """(status, the job view as JSON, the stream's last id), or None: encoded
    once for every watcher that shares the read."""
    job, last = await job_snapshot(s, job_id)
    if job is None:
        return None
    view = job_view(job).model_dump(mode="json")
    return job.status.value, json.dumps(view, separators=(",", ":")), last


async def job_snapshot(s: Services, job_id: str) -> tuple[Job | None, str]:
    """The job and its change stream's last entry id, read atomically."""
    k = s.store.keys
    async with s.redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(k.job(job_id))
        changes.latest_cmd(pipe, k.job_changes(job_id))
        raw, last = await pipe.execute()
    return (Job.from_redis(raw) if raw else None), changes.latest_of(last)


async def batch_snapshot(s: Services, batch_id: str) -> tuple[dict[str, Any] | None, str]:
    """The batch view and its change stream's last entry id (read first: a
    change in between is sent again, and dropped as a repeat)."""
    last = await changes.latest(s.redis, s.store.keys.batch_changes(batch_id))
    batch = await s.store.get_batch(batch_id)
    return (await batches.batch_view(s, batch) if batch else None), last


def counts_of(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view[k] for k in ("id", "total", "done", "counts")}


class Reader:
    """One watcher's reads of one object's change stream, shared with every
    watcher of the process that reads the same thing at the same time."""

    def __init__(self, s: Services, hub: Hub, ref: str, stream: str) -> None:
        self.s, self.hub, self.ref, self.stream = s, hub, ref, stream

    async def after(self, last: str) -> tuple[list[changes.Change], bool]:
        return await self.hub.shared(
            self.ref, ("after", last), lambda: changes.after(self.s.redis, self.stream, last)
        )


async def job_events(s: Services, hub: Hub, job: Job, last: str | None) -> AsyncIterator[Any]:
    """The SSE events of one job (see the module's docstring)."""
    reader = Reader(s, hub, f"job:{job.id}", s.store.keys.job_changes(job.id))
    beat = s.settings.watch_heartbeat_s

    async def snapshot() -> tuple[str, str, str] | None:
        return await hub.shared(f"job:{job.id}", "snapshot", lambda: job_snap(s, job.id))

    with hub.waiter(f"job:{job.id}") as woken:
        status = ""  # resumed: the status as of ``last`` is read below
        if last is None:
            if (snap := await snapshot()) is None:
                return
            status, view, last = snap
            yield event("job", view, last)
        while status not in TERMINAL_VALUES:
            woken.clear()
            found, gap = await reader.after(last)
            if gap:
                if (snap := await snapshot()) is None:
                    return
                status, view, last = snap
                yield event("job", view, last)
                continue
            for c in found:
                last, status = c.id, c.status
                yield event("status", c.data(job.id), last)
            if not found and not status:  # nothing after ``last``: the record is as of it
                if (snap := await snapshot()) is None:
                    return
                status = snap[0]
                continue
            if found or await wait_for(woken, beat):
                continue
            if not await s.redis.exists(s.store.keys.job(job.id)):
                return  # deleted meanwhile
            yield ServerSentEvent(comment="heartbeat")
        if (snap := await snapshot()) is not None:
            yield event("job", snap[1], last)


class Counts:
    """A batch watcher's counts: sent when they changed, at most once per
    ``interval`` seconds (a 50,000-job batch makes 50,000 changes)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sent: dict[str, Any] | None = None
        self.at = 0.0

    def due_in(self) -> float:
        return max(0.0, self.at + self.interval - time.monotonic())

    def take(self, view: dict[str, Any]) -> dict[str, Any] | None:
        """The counts to send now, if they changed (None otherwise)."""
        now = counts_of(view)
        if now == self.sent:
            return None
        self.sent, self.at = now, time.monotonic()
        return now


class BatchWatch:
    """One watcher of one batch: its last event id, status and counts."""

    def __init__(self, s: Services, hub: Hub, batch_id: str) -> None:
        self.s, self.hub, self.id = s, hub, batch_id
        self.reader = Reader(s, hub, f"batch:{batch_id}", s.store.keys.batch_changes(batch_id))
        self.counts = Counts(s.settings.watch_counts_interval_s)
        self.last, self.status = START, ""

    async def snapshot(self) -> tuple[dict[str, Any] | None, str]:
        return await self.hub.shared(
            f"batch:{self.id}", "snapshot", lambda: batch_snapshot(self.s, self.id)
        )

    async def step(self) -> tuple[list[ServerSentEvent], bool]:
        """The events since the last step, and whether anything changed (or
        None for the events when the batch is gone)."""
        found, gap = await self.reader.after(self.last)
        out: list[ServerSentEvent] = []
        if gap:
            view, self.last = await self.snapshot()
            if view is not None:
                self.status = view["status"]
                self.counts.take(view)
                out.append(event("batch", view, self.last))
            return out, True
        for c in found:
            self.last = c.id
            if c.status != self.status:  # a lifted pause is written on every cancel too
                self.status = c.status
                out.append(event("status", c.data(self.id), self.last))
        if self.status not in BATCH_TERMINAL and self.counts.due_in() <= 0:
            view, _ = await self.snapshot()
            if view is not None and (now := self.counts.take(view)) is not None:
                out.append(event("counts", now, self.last))
        return out, bool(found)


async def batch_events(s: Services, hub: Hub, batch: Batch, last: str | None) -> AsyncIterator[Any]:
    """The SSE events of one batch (see the module's docstring)."""
    w = BatchWatch(s, hub, batch.id)
    beat = s.settings.watch_heartbeat_s
    with hub.waiter(f"batch:{batch.id}") as woken:
        view, w.last = await w.snapshot()
        if view is None:
            return
        w.status = view["status"]
        w.counts.take(view)
        if last is None:
            yield event("batch", view, w.last)
        else:  # resumed: the changes after ``last``, then fresh counts
            found, _ = await w.reader.after(last)
            w.last, w.counts.sent = last, None
            w.status = found[0].previous if found else view["status"]
        while w.status not in BATCH_TERMINAL:
            woken.clear()
            out, changed = await w.step()
            for ev in out:
                yield ev
            if changed or w.status in BATCH_TERMINAL:
                continue
            if not await wait_for(woken, beat):
                if not await s.redis.exists(s.store.keys.batch(batch.id)):
                    return  # deleted meanwhile
                yield ServerSentEvent(comment="heartbeat")
            elif (pace := w.counts.due_in()) > 0:
                await asyncio.sleep(pace)  # pacing the counts, not waiting on anything
        final, _ = await w.snapshot()
        if final is not None:
            yield event("batch", final, w.last)
