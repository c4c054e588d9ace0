"""What happens to a job record: the steps that carry it on, its webhook
events, its stored result, and the atomic transitions that end or pause it."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from jobs.delivery import endpoints
from jobs.domain import batch_pause, costs, tenants, usage
from jobs.domain.records import Batch, Event, EventState, Job, JobUpdate
from jobs.domain.statuses import JobStatus, event_type
from jobs.observe import metrics, tracing
from jobs.services import Services
from jobs.settings import Settings
from jobs.storage import media
from jobs.storage.transitions import Step
from jobs.upstream import answers as interactions

log = logging.getLogger("interq.outcomes")

DAY_S = 86_400.0


# --------------------------------------------------------------------------- steps to enqueue


def submit_step(job_id: str, defer_s: float = 0.0, n: int = 0) -> Step:
    """The create of the job's n-th interaction (n > 0: continue / continuation)."""
    step_id = f"submit:{job_id}:{n}" if n else f"submit:{job_id}"
    return Step("submit", (job_id,), step_id, defer_s=defer_s, expires_s=30 * DAY_S)


def batch_done_step(batch_id: str) -> Step:
    return Step("batch_done", (batch_id,), f"batch_done:{batch_id}", expires_s=30 * DAY_S)


# --------------------------------------------------------------------------- new jobs


def new_job(
    settings: Settings,
    tenant: str,
    interaction: dict[str, Any],
    *,
    now: float,
    metadata: Any = None,
    custom_id: str | None = None,
    webhook_url: str = "",
    webhook_secret: str = "",
    timeout_s: float | None = None,
    batch_id: str = "",
    traceparent: str | None = None,
    job_id: str = "",
) -> Job:
    """A new job's record, as the API and batch intake write it (``traceparent``:
    the request's trace, read from the current span when not given). Its times
    are rounded to the millisecond, as they are stored ("%.3f"), so that the
    record is its own stored form (the API answers a create with it, not read
    back)."""
    timeout = min(timeout_s or settings.default_timeout_s, settings.max_timeout_s)
    now = round(now, 3)
    return Job(
        id=job_id or "job_" + uuid.uuid4().hex,
        status=JobStatus.queued,
        tenant=tenant,
        created_at=now,
        updated_at=now,
        deadline=round(now + timeout, 3),
        request=json.dumps(interaction),
        model=str(interaction.get("model") or interaction.get("agent")),
        metadata=metadata,
        custom_id=custom_id or "",
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        batch_id=batch_id,
        traceparent=tracing.current_traceparent() if traceparent is None else traceparent,
    )


# --------------------------------------------------------------------------- finishing


def job_data(job: Job, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` of a webhook event: what a caller needs to act on it."""
    data: dict[str, Any] = {
        "id": job.id,
        "status": extra.get("status", job.status.value),
        "upstream_status": extra.get("upstream_status", job.upstream_status or None),
        "custom_id": job.custom_id or None,
        "batch_id": job.batch_id or None,
        "metadata": job.metadata,
        "interaction_id": job.interaction_id or None,
        "result_url": f"/v1/jobs/{job.id}/result",
    }
    for k in ("output_text", "usage", "estimated_cost_usd", "error", "pending_calls", "note"):
        if extra.get(k) is not None:
            data[k] = extra[k]
    return data


async def make_event(svc: Services, job: Job, etype: str, extra: dict[str, Any]) -> Event:
    return await new_event(svc, job, etype, job_data(job, extra))


async def new_event(svc: Services, owner: Job | Batch, etype: str, data: dict[str, Any]) -> Event:
    """An event of a job or batch. Its destination is read at delivery time:
    the owner's own webhook, else the tenant's default endpoint; with neither,
    there is nothing to deliver."""
    deliverable = bool(owner.webhook_url) or await endpoints.has_endpoint(svc, owner.tenant)
    event_id = "evt_" + uuid.uuid4().hex
    body = {
        "type": etype,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
    }
    return Event(
        id=event_id,
        owner=owner.ref,
        job_id=owner.id,
        tenant=owner.tenant,
        type=etype,
        body=json.dumps(body, separators=(",", ":")),
        state=EventState.pending if deliverable else EventState.no_endpoint,
        attempts=0,
        created_at=time.time(),
        traceparent=getattr(owner, "traceparent", ""),
    )


def _result_fields(job: Job, interaction: dict[str, Any], extra: dict[str, Any]) -> JobUpdate:
    """Fields (and event data) read out of an interaction that stopped. Its
    text is the turn's: with the earlier hops of a continuation chain, as the
    SDK merges them (``answers.turn_text``)."""
    fields: JobUpdate = {"upstream_status": str(interaction.get("status"))}
    extra["upstream_status"] = fields["upstream_status"]
    extra["output_text"], _ = interactions.turn_text(interaction, earlier_hops(job))
    hops = [*job.usage_by_interaction, hop_usage(interaction)]
    extra["usage"] = usage.total(hops)
    fields["usage_by_interaction"] = hops
    if extra["output_text"] is not None:
        fields["output_text"] = extra["output_text"]
    if extra["usage"] is not None:
        fields["usage"] = extra["usage"]
    return fields


def earlier_hops(job: Job) -> tuple[str, str] | None:
    """What the turn's earlier interactions left (``answers.turn_text``)."""
    return None if job.output_carry is None else (job.output_carry, job.output_prefix)


def hop_usage(interaction: dict[str, Any] | None) -> dict[str, Any] | None:
    """One interaction's own ``usage``."""
    u = interaction.get("usage") if interaction else None
    return u if isinstance(u, dict) else None


@tracing.job_step("interq.finish")
async def finish(
    svc: Services,
    job: Job,
    status: JobStatus,
    *,
    expect: JobStatus | None = None,
    interaction: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    note: str | None = None,
) -> bool:
    """Mark the job terminal (from ``expect``, by default the status it was
    read with), create its event and enqueue its delivery, in one atomic step.
    The result (if any) must already be in storage."""
    extra: dict[str, Any] = {"status": status.value, "error": error, "note": note}
    fields: JobUpdate = {"finished_at": time.time(), "pending_create": ""}
    if interaction is not None:
        fields.update(_result_fields(job, interaction, extra))
        costs.stamp(svc.settings, job.model, fields, extra)
    if error is not None:
        fields["error"] = error
    if note is not None:
        fields["note"] = note
    event = await make_event(svc, job, event_type(status), extra)
    fields["event_id"] = event.id
    out = await svc.store.finish(
        job,
        status,
        expect=expect or job.status,
        changes=fields,
        event=event,
        batch_step=batch_done_step(job.batch_id) if job.batch_id else None,
    )
    if out.ok:
        model = metrics.model_label(job.model)
        metrics.JOBS_FINISHED.labels(status=status.value, model=model).inc()
        metrics.JOB_DURATION.labels(status=status.value).observe(
            time.time() - (job.created_at or time.time())
        )
        # earlier hops were counted at theirs
        await tenants.record_usage(svc, job, hop_usage(interaction))
        if job.batch_id:
            await add_batch_usage(
                svc, job.batch_id, extra.get("usage"), fields.get("cost_nano_usd")
            )
            await batch_pause.after_finish(svc, job.batch_id, status, error)
        log.info("job %s %s", job.id, status.value)
    return out.ok


async def add_batch_usage(
    svc: Services, batch_id: str, usage: Any, cost_nano: int | None = None
) -> None:
    counts = interactions.token_counts(usage)
    if counts:
        key = svc.store.keys.batch(batch_id)
        async with svc.redis.pipeline(transaction=False) as pipe:
            for kind in ("input", "output"):
                if counts.get(kind):
                    pipe.hincrby(key, f"{kind}_tokens", counts[kind])
            if cost_nano:  # the running total (jobs/domain/costs.py)
                pipe.hincrby(key, "cost_nano_usd", cost_nano)
            await pipe.execute()


async def pause(svc: Services, job: Job, interaction: dict[str, Any]) -> bool:
    """``requires_action``: stop polling, record the pending function calls and
    fire ``job.requires_action``, atomically."""
    calls = interactions.pending_calls(interaction)
    extra: dict[str, Any] = {"status": JobStatus.requires_action.value, "pending_calls": calls}
    fields = _result_fields(job, interaction, extra)
    fields["pending_calls"] = calls
    costs.stamp(svc.settings, job.model, fields, extra)
    event = await make_event(svc, job, event_type(JobStatus.requires_action), extra)
    # a paused job is not polled: its entry in the poll index moves to the
    # deadline, where the poll engine expires it if it is still paused
    out = await svc.store.pause(job, fields, event, poll_at=job.deadline)
    if out.ok:
        await tenants.record_usage(svc, job, hop_usage(interaction))
    return out.ok


def follow_up_body(job: Job, interaction: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A create that continues ``interaction``: the original request (tools,
    system_instruction, config must be sent again each turn) chained with
    ``previous_interaction_id``, plus ``environment`` for managed agents."""
    body = job.body()
    for k in ("input", "continuation_token", "previous_interaction_id"):
        body.pop(k, None)
    body["previous_interaction_id"] = str(interaction["id"])
    env_id = interaction.get("environment_id")
    if env_id and "agent" in body:
        body["environment"] = env_id
    body.update(changes)
    return body


async def chain(
    svc: Services,
    job: Job,
    expect: JobStatus,
    body: dict[str, Any],
    ended: dict[str, Any] | None = None,
) -> bool:
    """Queue a follow-up create for the job: status ``running``, the body kept
    on the record, and a submit step, atomically. With ``ended`` (a
    continuation token's interaction, which nothing recorded yet) the next
    interaction goes on the same turn: its text and usage join the job's.
    Without it (continue after requires_action) a new turn starts."""
    changes: JobUpdate = {
        "pending_create": json.dumps(body),
        "hop_body": json.dumps(body),
        "pending_calls": None,
        "output_prefix": "",
        "output_carry": None,
    }
    if ended is not None:
        carry, run = interactions.turn_text(ended, earlier_hops(job))
        changes["output_prefix"], changes["output_carry"] = run, carry or ""
        hops = [*job.usage_by_interaction, hop_usage(ended)]
        changes["usage_by_interaction"] = hops
        changes["usage"] = usage.total(hops)
        costs.stamp(svc.settings, job.model, changes, {})
    step = submit_step(job.id, n=len(job.interaction_ids))
    out = await svc.store.resume(job, expect, changes, step)
    if out.ok and ended is not None:
        await tenants.record_usage(svc, job, hop_usage(ended))
    return out.ok


@tracing.job_step("interq.store_result")
async def store_result(svc: Services, job: Job, inter: dict[str, Any]) -> str:
    """Write the interaction (inline media split out into their own files)."""
    jid = job.id
    stored, files = media.extract(inter, lambda name: f"/v1/jobs/{jid}/files/{name}")
    for f in files:
        await svc.results.put(f"{jid}/files/{f.name}", f.data)
    key = f"{jid}/{inter['id']}.json"
    await svc.results.put_json(key, stored)
    job.result_key = key
    fields: JobUpdate = {"result_key": key}
    if files:
        job.files = {**job.files, **{f.name: f.mime_type for f in files}}
        fields["files"] = job.files
    await svc.store.set_fields(jid, fields)
    return key
