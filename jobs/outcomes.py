"""What happens to a job record: the steps that carry it on, its webhook
events, its stored result, and the atomic transitions that end or pause it."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from . import endpoints, interactions, media, metrics
from .models import JobStatus, event_type
from .services import Services
from .settings import Settings
from .store import Event, Fields, Step

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
    interaction: dict[str, Any],
    *,
    now: float,
    metadata: Any = None,
    custom_id: str | None = None,
    webhook_url: str = "",
    webhook_secret: str = "",
    timeout_s: float | None = None,
    batch_id: str = "",
) -> tuple[str, Fields]:
    """A new job's id and record, as the API and batch intake write it."""
    timeout = min(timeout_s or settings.default_timeout_s, settings.max_timeout_s)
    fields: Fields = {
        "status": JobStatus.queued.value,
        "created_at": f"{now:.3f}",
        "updated_at": f"{now:.3f}",
        "deadline": f"{now + timeout:.3f}",
        "request": json.dumps(interaction),
        "model": str(interaction.get("model") or interaction.get("agent")),
        "metadata": json.dumps(metadata),
        "custom_id": custom_id or "",
        "webhook_url": webhook_url,
        "webhook_secret": webhook_secret,
    }
    if batch_id:
        fields["batch_id"] = batch_id
    return "job_" + uuid.uuid4().hex, fields


# --------------------------------------------------------------------------- finishing


def job_data(job: Fields, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` of a webhook event: what a caller needs to act on it."""
    data: dict[str, Any] = {
        "id": job["id"],
        "status": extra.get("status", job.get("status")),
        "upstream_status": extra.get("upstream_status", job.get("upstream_status") or None),
        "custom_id": job.get("custom_id") or None,
        "batch_id": job.get("batch_id") or None,
        "metadata": json.loads(job.get("metadata") or "null"),
        "interaction_id": job.get("interaction_id") or None,
        "result_url": f"/v1/jobs/{job['id']}/result",
    }
    for k in ("output_text", "usage", "error", "pending_calls", "note"):
        if extra.get(k) is not None:
            data[k] = extra[k]
    return data


async def make_event(svc: Services, job: Fields, etype: str, extra: dict[str, Any]) -> Event:
    return await new_event(svc, job, f"job:{job['id']}", etype, job_data(job, extra))


async def new_event(
    svc: Services, owner: Fields, owner_ref: str, etype: str, data: dict[str, Any]
) -> Event:
    """An event of a job or batch (``owner_ref`` "job:<id>" / "batch:<id>"). Its
    destination is read at delivery time: the owner's own webhook, else the
    tenant's default endpoint; with neither, there is nothing to deliver."""
    deliverable = bool(owner.get("webhook_url")) or await endpoints.has_endpoint(
        svc, owner.get("tenant", "")
    )
    event_id = "evt_" + uuid.uuid4().hex
    body = {
        "type": etype,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
    }
    return Event(
        event_id,
        {
            "id": event_id,
            "owner": owner_ref,
            "job_id": owner["id"],
            "tenant": owner.get("tenant", ""),
            "type": etype,
            "body": json.dumps(body, separators=(",", ":")),
            "state": "pending" if deliverable else "no_endpoint",
            "attempts": "0",
            "created_at": f"{time.time():.3f}",
        },
    )


def _result_fields(job: Fields, interaction: dict[str, Any], extra: dict[str, Any]) -> Fields:
    """Fields (and event data) read out of an interaction that stopped. Text
    from earlier interactions of a continuation chain comes first."""
    fields: Fields = {"upstream_status": str(interaction.get("status"))}
    extra["upstream_status"] = fields["upstream_status"]
    text = interactions.output_text(interaction)
    prefix = job.get("output_prefix", "")
    extra["output_text"] = prefix + (text or "") if prefix or text is not None else None
    extra["usage"] = interaction.get("usage")
    if extra["output_text"] is not None:
        fields["output_text"] = extra["output_text"]
    if extra["usage"] is not None:
        fields["usage"] = json.dumps(extra["usage"])
    return fields


def _count_tokens(job: Fields, usage: Any) -> None:
    model = metrics.model_label(job.get("model"))
    for kind, n in interactions.token_counts(usage).items():
        metrics.TOKENS.labels(model=model, kind=kind).inc(n)


async def finish(
    svc: Services,
    job: Fields,
    status: JobStatus,
    *,
    expect: set[JobStatus] | None = None,
    interaction: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    note: str | None = None,
) -> bool:
    """Mark the job terminal, create its event and enqueue its delivery, in
    one atomic step. The result (if any) must already be in storage."""
    extra: dict[str, Any] = {"status": status.value, "error": error, "note": note}
    fields: Fields = {"finished_at": f"{time.time():.3f}", "pending_create": ""}
    if interaction is not None:
        fields.update(_result_fields(job, interaction, extra))
    if error is not None:
        fields["error"] = json.dumps(error)
    if note is not None:
        fields["note"] = note
    event = await make_event(svc, job, event_type(status), extra)
    fields["event_id"] = event.id
    out = await svc.store.transition(
        job["id"],
        expect=expect or {JobStatus(job["status"])},
        cond={"interaction_id": job.get("interaction_id", "")},
        status=status,
        set_fields=fields,
        event=event,
        unpoll=True,
        batch_step=batch_done_step(job["batch_id"]) if job.get("batch_id") else None,
    )
    if out.ok:
        model = metrics.model_label(job.get("model"))
        metrics.JOBS_FINISHED.labels(status=status.value, model=model).inc()
        metrics.JOB_DURATION.labels(status=status.value).observe(
            time.time() - float(job.get("created_at") or time.time())
        )
        _count_tokens(job, extra.get("usage"))
        if job.get("batch_id"):
            await add_batch_usage(svc, job["batch_id"], extra.get("usage"))
        log.info("job %s %s", job["id"], status.value)
    return out.ok


async def add_batch_usage(svc: Services, batch_id: str, usage: Any) -> None:
    counts = interactions.token_counts(usage)
    if counts:
        key = svc.store.keys.batch(batch_id)
        async with svc.redis.pipeline(transaction=False) as pipe:
            for kind in ("input", "output"):
                if counts.get(kind):
                    pipe.hincrby(key, f"{kind}_tokens", counts[kind])
            await pipe.execute()


async def pause(svc: Services, job: Fields, interaction: dict[str, Any]) -> bool:
    """``requires_action``: stop polling, record the pending function calls and
    fire ``job.requires_action``, atomically."""
    calls = interactions.pending_calls(interaction)
    extra: dict[str, Any] = {"status": JobStatus.requires_action.value, "pending_calls": calls}
    fields = _result_fields(job, interaction, extra)
    fields["pending_calls"] = json.dumps(calls)
    event = await make_event(svc, job, "job.requires_action", extra)
    iid = job.get("interaction_id", "")
    # a paused job is not polled: its entry in the poll index moves to the
    # deadline, where the poll engine expires it if it is still paused
    out = await svc.store.transition(
        job["id"],
        expect={JobStatus.running},
        cond={"interaction_id": iid},
        status=JobStatus.requires_action,
        set_fields=fields,
        event=event,
        poll_at=float(job["deadline"]),
    )
    if out.ok:
        _count_tokens(job, extra.get("usage"))
    return out.ok


def follow_up_body(job: Fields, interaction: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A create that continues ``interaction``: the original request (tools,
    system_instruction, config must be sent again each turn) chained with
    ``previous_interaction_id``, plus ``environment`` for managed agents."""
    body: dict[str, Any] = json.loads(job["request"])
    for k in ("input", "continuation_token", "previous_interaction_id"):
        body.pop(k, None)
    body["previous_interaction_id"] = str(interaction["id"])
    env_id = interaction.get("environment_id")
    if env_id and "agent" in body:
        body["environment"] = env_id
    body.update(changes)
    return body


async def chain(
    svc: Services, job: Fields, expect: JobStatus, body: dict[str, Any], output_prefix: str = ""
) -> bool:
    """Queue a follow-up create for the job (continue after requires_action,
    or a continuation token): status ``running``, the body kept on the record,
    and a submit step, atomically."""
    n = len(json.loads(job.get("interaction_ids") or "[]"))
    out = await svc.store.transition(
        job["id"],
        expect={expect},
        cond={"interaction_id": job.get("interaction_id", "")},
        status=JobStatus.running,
        set_fields={
            "pending_create": json.dumps(body),
            "hop_body": json.dumps(body),
            "pending_calls": "",
            "output_prefix": job.get("output_prefix", "") + output_prefix,
        },
        steps=[submit_step(job["id"], n=n)],
        unpoll=True,
    )
    return out.ok


async def store_result(svc: Services, job: Fields, inter: dict[str, Any]) -> str:
    """Write the interaction (inline media split out into their own files)."""
    jid = job["id"]
    stored, files = media.extract(inter, lambda name: f"/v1/jobs/{jid}/files/{name}")
    for f in files:
        await svc.results.put(f"{jid}/files/{f.name}", f.data)
    key = f"{jid}/{inter['id']}.json"
    await svc.results.put_json(key, stored)
    fields: Fields = {"result_key": key}
    if files:
        known = json.loads(job.get("files") or "{}")
        known.update({f.name: f.mime_type for f in files})
        fields["files"] = json.dumps(known)
    await svc.store.set_fields(jid, fields)
    job.update(fields)
    return key
