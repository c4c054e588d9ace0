"""Batches: many jobs accepted at once, counted, streamed back in input order.

A batch is accepted whole or not at all. Its lines are read as a stream and
checked off the event loop (``batch_lines.Intake``: errors reported by line
number, each line turned into its job record at once) while the records made
before are written in chunks; then what needs Redis is checked (webhook
addresses, chains), and the batch is committed in one small step
(``batch_ingest.py``, ``jobs/storage/batch_write.py``: staged, invisible and
not dispatchable until the commit; purged if it never commits). Its jobs
wait in the batch's own dispatch lane (see ``dispatch.py``). The transition
that ends the batch's last job enqueues ``batch_done``, which fires
``batch.completed``.

Keys (``jobs/keys.py``): the batch record (total, done, usage), its counts
(status -> count, kept by the transition scripts) and its job ids in input
order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from jobs.domain import batch_pause, cancel, tenants
from jobs.domain import lifecycle as outcomes
from jobs.domain.records import Batch, Job
from jobs.domain.statuses import BATCH_COMPLETED, TERMINAL, JobStatus
from jobs.services import Services
from jobs.settings import get_settings as get_settings  # the default settings (tests patch it)
from jobs.storage.store import STAGING, Page
from jobs.upstream import answers as interactions

CHUNK = 500


async def get_batch(svc: Services, tenant: str, batch_id: str) -> Batch | None:
    """The tenant's batch; one still being written (``staging``) is not shown."""
    if len(batch_id) > 64:
        return None
    batch = await svc.store.get_batch(batch_id)
    if batch is None or batch.tenant != tenant or batch.extra.get(STAGING):
        return None
    return batch


async def batch_view(svc: Services, batch: Batch) -> dict[str, Any]:
    raw = await svc.redis.hgetall(svc.store.keys.batch_counts(batch.id))  # type: ignore[misc]
    counts = {s.value: 0 for s in JobStatus}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        if name in counts:
            counts[name] = int(v)
    view = {
        "id": batch.id,
        "status": batch.status,
        "total": batch.total,
        "counts": counts,
        "done": sum(counts[s.value] for s in TERMINAL),
        "created_at": batch.created_at,
        "finished_at": batch.finished_at,
        "metadata": batch.metadata,
        "usage": {"input_tokens": batch.input_tokens, "output_tokens": batch.output_tokens},
        "cancel_requested": batch.cancel_requested,
        "reruns": batch.reruns,
    } | batch_pause.view_fields(batch)
    return view | await tenants.batch_view_fields(svc, batch)  # cost, a tenant's hold


async def job_ids(svc: Services, batch_id: str, start: int, count: int) -> list[str]:
    raw = await svc.redis.lrange(  # type: ignore[misc]
        svc.store.keys.batch_jobs(batch_id), start, start + count - 1
    )
    return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]


async def page(
    svc: Services, batch_id: str, status: JobStatus | None, limit: int, start: int
) -> Page:
    """Jobs of a batch in input order from index ``start`` (the cursor)."""
    out = Page()
    pos = start
    while len(out.items) < limit:
        ids = await job_ids(svc, batch_id, pos, CHUNK)
        if not ids:
            return out
        for i, job in enumerate(await svc.store.get_jobs(ids)):
            if job is not None and (status is None or job.status == status):
                out.items.append(job)
                if len(out.items) == limit:
                    out.next_cursor = str(pos + i + 1)
                    return out
        pos += len(ids)
    return out


def result_line(job: Job) -> dict[str, Any]:
    return {
        "custom_id": job.custom_id,
        "id": job.id,
        "status": job.status.value,
        "output_text": job.output_text,
        "usage": job.usage,
        "error": job.error,
    }


def missing_line(job_id: str) -> dict[str, Any]:
    err = {"code": "missing", "message": "the job record is gone"}
    return {
        "custom_id": None,
        "id": job_id,
        "status": "unknown",
        "output_text": None,
        "usage": None,
        "error": err,
    }


async def iter_results(svc: Services, batch_id: str) -> AsyncIterator[bytes]:
    start = 0
    while True:
        ids = await job_ids(svc, batch_id, start, CHUNK)
        if not ids:
            return
        jobs = await svc.store.get_jobs(ids)
        yield b"".join(
            json.dumps(result_line(j) if j else missing_line(i)).encode() + b"\n"
            for i, j in zip(ids, jobs, strict=True)
        )
        start += len(ids)


async def cancel_batch(svc: Services, batch: Batch) -> None:
    """Queued jobs end at once (never sent); running ones are cancelled upstream."""
    await svc.redis.hset(svc.store.keys.batch(batch.id), "cancel_requested", "1")  # type: ignore[misc]
    await batch_pause.lift(svc, batch.id)  # the dispatcher drops the cancelled jobs
    start = 0
    while True:
        ids = await job_ids(svc, batch.id, start, CHUNK)
        if not ids:
            return
        jobs = [j for j in await svc.store.get_jobs(ids) if j is not None]
        await asyncio.gather(*(cancel_one(svc, j) for j in jobs))
        start += len(ids)


async def cancel_one(svc: Services, job: Job) -> None:
    await cancel.request(svc, job, "batch cancelled before the job was sent")


async def total_usage(svc: Services, batch_id: str) -> tuple[int, int]:
    """Exact input and output token totals over the batch's jobs (the running
    totals shown while it runs are updated after each job, so they can trail)."""
    totals = {"input": 0, "output": 0}
    start = 0
    while ids := await job_ids(svc, batch_id, start, CHUNK):
        for job in await svc.store.get_jobs(ids):
            usage = job.usage if job else None
            for kind, n in interactions.token_counts(usage).items():
                if kind in totals:
                    totals[kind] += n
        start += len(ids)
    return totals["input"], totals["output"]


async def batch_done(ctx: dict[str, Any], batch_id: str) -> None:
    """Every job of the batch has ended: fire ``batch.completed`` once."""
    svc: Services = ctx["svc"]
    batch = await svc.store.get_batch(batch_id)
    if batch is None or batch.status != "in_progress" or batch.done < batch.total:
        return  # ended already, or a rerun took jobs back since this was queued
    now = round(time.time(), 3)  # as stored
    tokens_in, tokens_out = await total_usage(svc, batch_id)
    ended = replace(batch, input_tokens=tokens_in, output_tokens=tokens_out, finished_at=now)
    data = await batch_view(svc, ended)
    cancelled = batch.cancel_requested and data["counts"]["cancelled"] > 0
    final = data["status"] = "cancelled" if cancelled else "completed"
    event = await outcomes.new_event(svc, batch, BATCH_COMPLETED, data)
    await svc.store.finish_batch(
        batch,
        {
            "status": final,
            "finished_at": now,
            "event_id": event.id,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
        },
        event,
    )
