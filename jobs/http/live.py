"""Live output in a job's event stream: while a client watches a running job,
the upstream's own stream of its current interaction is relayed
(``jobs/upstream/stream.py``; one upstream stream per interaction in this
process, whatever the number of watchers) as two more kinds of event, beside
the ``job`` and ``status`` events of ``jobs/http/sse.py``:

- ``output``: ``{id, interaction_id, text, thought_summary}``, the partial
  text so far, always the first live event of a watcher (sent once there is
  any, also to a watcher that joins late or reconnects): it replaces what
  the client had;
- ``delta``: ``{id, interaction_id, index, type, text}``, the next piece
  (``type`` ``text`` or ``thought_summary``): the client appends it.

Neither has an event id, so ``Last-Event-ID`` stays the change stream's. The
job's status still comes from polling: a relay that ends (the interaction
ended, or its stream kept dropping) changes nothing but the deltas. Off with
``INTERQ_LIVE_OUTPUT=false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from jobs.domain.statuses import TERMINAL, JobStatus
from jobs.services import Services
from jobs.upstream.stream import Delta, Relays

# after a relay ended, the job is read again this often, this many times, for its
# next interaction (a continuation hop makes no change of status); otherwise it
# is read again only when its status changes
RECHECK_S, RECHECKS = 1.0, 10
_END = object()


def _sse(kind: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event=kind)


def output_event(job_id: str, iid: str, pieces: list[Delta]) -> ServerSentEvent:
    text = "".join(d.text for d in pieces if d.kind == "text")
    thought = "".join(d.text for d in pieces if d.kind == "thought_summary")
    data = {"id": job_id, "interaction_id": iid, "text": text, "thought_summary": thought}
    return _sse("output", data)


def delta_event(job_id: str, iid: str, d: Delta) -> ServerSentEvent:
    data = {"id": job_id, "interaction_id": iid, "index": d.index, "type": d.kind, "text": d.text}
    return _sse("delta", data)


async def _relay(
    s: Services, relays: Relays, job_id: str, out: asyncio.Queue[Any], changed: asyncio.Event
) -> None:
    """Forward the deltas of each interaction the job runs while it runs."""
    done: set[str] = set()
    rechecks = 0
    while True:
        changed.clear()
        job = await s.store.get_job(job_id)
        if job is None or job.status in TERMINAL:
            return
        iid = job.interaction_id
        if job.status == JobStatus.running and iid and iid not in done:
            await _forward(relays, job_id, iid, out)
            done.add(iid)
            rechecks = RECHECKS
        if rechecks:
            rechecks -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), RECHECK_S)
        else:
            await changed.wait()


async def _forward(relays: Relays, job_id: str, iid: str, out: asyncio.Queue[Any]) -> None:
    """One interaction's pieces until its relay ends: the first as an
    ``output`` (the text so far), the rest as ``delta``."""
    async with relays.watch(iid) as (so_far, queue):
        started = bool(so_far)
        if started:
            await out.put(output_event(job_id, iid, so_far))
        while (d := await queue.get()) is not None:
            event = delta_event(job_id, iid, d) if started else output_event(job_id, iid, [d])
            await out.put(event)
            started = True


async def with_live_output(
    s: Services, relays: Relays | None, job_id: str, events: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    """``events`` (a job's status events), with its live output merged in."""
    if relays is None:
        async for e in events:
            yield e
        return
    out: asyncio.Queue[Any] = asyncio.Queue(256)
    changed = asyncio.Event()

    async def statuses() -> None:
        try:
            async for e in events:
                await out.put(e)
                if getattr(e, "event", None) in ("status", "job"):
                    changed.set()
        finally:
            await out.put(_END)

    relay = _relay(s, relays, job_id, out, changed)
    tasks = [asyncio.create_task(statuses()), asyncio.create_task(relay)]
    try:
        while (e := await out.get()) is not _END:
            yield e
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
