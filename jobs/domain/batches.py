"""Batches: many jobs accepted at once, counted, streamed back in input order.

A batch is accepted whole or not at all: every line is validated first (errors
reported by line number), then the batch record and all its jobs are written
in one Redis transaction (a pipeline under MULTI). Its jobs wait in the batch's
own dispatch lane (see ``dispatch.py``). The transition that ends the batch's
last job enqueues ``batch_done``, which fires ``batch.completed``.

Keys (``jobs/keys.py``): the batch record (total, done, usage), its counts
(status -> count, kept by the transition scripts) and its job ids in input
order.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.delivery import url_safety
from jobs.domain import batch_pause, cancel, checks, tenants
from jobs.domain import lifecycle as outcomes
from jobs.domain.records import Batch, Job
from jobs.domain.requests import WebhookSpec, check_interaction_body
from jobs.domain.statuses import BATCH_COMPLETED, TERMINAL, JobStatus
from jobs.errors import BatchError
from jobs.observe import metrics
from jobs.services import Services
from jobs.settings import get_settings
from jobs.storage.keys import lane_of
from jobs.storage.store import Page
from jobs.upstream import answers as interactions

MAX_REPORTED_ERRORS = 100
CHUNK = 500


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1, max_length=256)
    interaction: dict[str, Any]
    metadata: Any = None
    timeout_s: float | None = Field(default=None, gt=0)
    webhook: WebhookSpec | None = None

    @field_validator("interaction")
    @classmethod
    def _check(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_interaction_body(v)

    @field_validator("webhook")
    @classmethod
    def _needs_secret(cls, v: WebhookSpec | None) -> WebhookSpec | None:
        if v is not None and v.secret is None:
            raise ValueError("a per-line webhook needs its own 'secret'")
        return v


def ndjson_items(body: bytes) -> list[tuple[int, Any]]:
    """(line number, parsed JSON or the exception) for each non-blank line."""
    out: list[tuple[int, Any]] = []
    for n, raw in enumerate(body.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            out.append((n, json.loads(raw)))
        except ValueError as e:
            out.append((n, e))
    return out


def explain(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'line'}: {err['msg']}" for err in e.errors()
    )


def validate_lines(
    items: Iterable[tuple[int, Any]], max_jobs: int, *, forward_unknown: bool | None = None
) -> list[BatchLine]:
    """Every line checked (``BatchLine``, then the SDK's types: ``checks.py``);
    ``forward_unknown`` defaults to ``INTERQ_FORWARD_UNKNOWN_FIELDS``."""
    if forward_unknown is None:
        forward_unknown = get_settings().forward_unknown_fields
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    count = 0
    for n, item in items:
        count += 1
        if isinstance(item, Exception):
            errors.append({"line": n, "error": f"not valid JSON: {item}"})
            continue
        if not isinstance(item, dict):
            errors.append({"line": n, "error": "each line must be a JSON object"})
            continue
        try:
            line = BatchLine.model_validate(item)
        except ValidationError as e:
            errors.append({"line": n, "error": explain(e)})
            continue
        problem = checks.batch_line_problem(
            line.interaction, line.metadata, forward_unknown=forward_unknown
        )
        if problem:
            errors.append({"line": n, "error": problem})
            continue
        if line.custom_id in seen:
            errors.append(
                {
                    "line": n,
                    "error": f"custom_id {line.custom_id!r} repeats line {seen[line.custom_id]}",
                }
            )
            continue
        seen[line.custom_id] = n
        lines.append(line)
    if count == 0:
        raise BatchError("the batch has no jobs")
    if count > max_jobs:
        raise BatchError(f"a batch holds at most {max_jobs} jobs; this one has {count}")
    if errors:
        raise BatchError(
            f"{len(errors)} of {count} lines are invalid; nothing was queued",
            errors[:MAX_REPORTED_ERRORS],
        )
    return lines


async def create_batch(
    svc: Services,
    tenant: str,
    lines: list[BatchLine],
    webhook: WebhookSpec | None,
    metadata: Any,
) -> str:
    cfg = svc.settings
    urls = {str(ln.webhook.url) for ln in lines if ln.webhook} | (
        {str(webhook.url)} if webhook else set()
    )
    for url in urls:
        try:
            await url_safety.resolve(url, svc.webhook_policy)
        except url_safety.UnsafeURL as e:
            raise BatchError(str(e)) from None
    batch_id = "bat_" + uuid.uuid4().hex
    now = time.time()
    lane = lane_of(tenant, batch_id)
    batch = Batch(
        id=batch_id,
        tenant=tenant,
        status="in_progress",
        total=len(lines),
        done=0,
        created_at=now,
        metadata=metadata,
        webhook_url=str(webhook.url) if webhook else "",
        webhook_secret=(webhook.secret or "") if webhook else "",
    )
    async with svc.redis.pipeline(transaction=True) as pipe:
        pipe.hset(svc.store.keys.batch(batch_id), mapping=batch.to_redis())
        pipe.hset(svc.store.keys.batch_counts(batch_id), mapping={"queued": str(len(lines))})
        for ln in lines:
            job = outcomes.new_job(
                cfg,
                tenant,
                ln.interaction,
                now=now,
                metadata=ln.metadata,
                custom_id=ln.custom_id,
                webhook_url=str(ln.webhook.url) if ln.webhook else "",
                webhook_secret=(ln.webhook.secret or "") if ln.webhook else "",
                timeout_s=ln.timeout_s,
                batch_id=batch_id,
            )
            await svc.store.create_job(job, lane=lane, pipe=pipe)
        await pipe.execute()
    for ln in lines:
        inter = ln.interaction
        metrics.JOBS_ACCEPTED.labels(
            model=metrics.model_label(inter.get("model") or inter.get("agent"))
        ).inc()
    return batch_id


async def get_batch(svc: Services, tenant: str, batch_id: str) -> Batch | None:
    if len(batch_id) > 64:
        return None
    batch = await svc.store.get_batch(batch_id)
    if batch is None or batch.tenant != tenant:
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
