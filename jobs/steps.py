"""The worker steps: submit, poll, deliver. Each is short and idempotent.

* ``submit(job_id)`` sends the create once, then records the interaction id
  and enqueues the first poll in one atomic step. A re-run that finds the job
  no longer ``queued`` does nothing. A re-run that finds ``create_inflight``
  set knows an earlier create may have reached the upstream with its answer
  lost: it re-sends and flags the job ``possible_duplicate``.
* ``poll(job_id, interaction_id)`` GETs the interaction. Pending: it raises
  ``arq.Retry(defer=...)``, so no worker slot is held while waiting. Terminal:
  the result goes to storage first, then the job is marked terminal and its
  webhook event created and enqueued, atomically (an outbox).
* ``deliver(event_id)`` POSTs the signed event, retrying on the schedule, then
  dead-letters it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from arq import Retry

from . import endpoints, interactions, logs, metrics, webhooks
from .models import UPSTREAM_KNOWN, UPSTREAM_TERMINAL, JobStatus, classify_upstream
from .outcomes import chain, finish, follow_up_body, pause, poll_step, store_result
from .services import Services
from .store import Fields
from .upstream import NotFound, Rejected, Retryable, UpstreamError

log = logging.getLogger("interq.steps")

STEP_GUARD_MAX_TRIES = 25  # unexpected errors in one step before it gives up
STEP_BUDGET_SHARE = 0.8  # of INTERQ_STEP_TIMEOUT_S: a step times itself out before arq does
CANCEL_404_MAX_TRIES = 3


# --------------------------------------------------------------------------- timing


def poll_interval(svc: Services, polls_done: int) -> float:
    s = svc.settings
    base = min(s.poll_max_s, s.poll_initial_s * s.poll_multiplier ** max(polls_done, 0))
    return float(max(0.05, base * (1 + random.uniform(-s.poll_jitter, s.poll_jitter))))


def retry_delay(svc: Services, err: Retryable, tries: int) -> float:
    """The server's hint when it gave one, else capped exponential backoff."""
    s = svc.settings
    if err.delay_s is not None:
        return err.delay_s * (1 + random.uniform(0.0, 0.1))
    base = min(s.retry_max_s, s.retry_initial_s * 2.0 ** max(tries - 1, 0))
    return base * random.uniform(0.5, 1.0)


# --------------------------------------------------------------------------- guard


StepFn = Callable[..., Coroutine[Any, Any, None]]


def guarded(name: str) -> Callable[[StepFn], StepFn]:
    """An unexpected exception in a step is logged and retried with backoff,
    never left to kill the job: after too many, the job fails visibly."""

    def wrap(fn: StepFn) -> StepFn:
        @functools.wraps(fn)
        async def inner(ctx: dict[str, Any], *args: str) -> None:
            logs.clear()
            if name == "deliver":
                logs.bind(event_id=args[0])
            else:
                logs.bind(job_id=args[0], interaction_id=args[1] if len(args) > 1 else None)
            tries = int(ctx.get("job_try", 1))
            budget = ctx["svc"].settings.step_timeout_s * STEP_BUDGET_SHARE
            try:
                async with asyncio.timeout(budget):
                    await fn(ctx, *args)
            except Retry:
                raise
            except TimeoutError:
                # arq treats its own timeout as final and drops the job: a step
                # that runs long (Redis down, a slow upstream) must retry instead
                metrics.STEP_ERRORS.labels(step=name).inc()
                log.warning("step %s%s ran past %.1f s; retrying", name, args, budget)
                raise Retry(defer=min(30.0, 2.0**tries)) from None
            except Exception as e:
                metrics.STEP_ERRORS.labels(step=name).inc()
                log.exception("step %s%s failed unexpectedly (try %d)", name, args, tries)
                if tries < STEP_GUARD_MAX_TRIES:
                    raise Retry(defer=min(60.0, 2.0**tries)) from None
                await give_up(ctx["svc"], name, args, f"{type(e).__name__}: {e}")

        return inner

    return wrap


async def give_up(svc: Services, name: str, args: tuple[str, ...], reason: str) -> None:
    if name == "deliver":
        ev = await svc.store.get_event(args[0]) or {}
        await svc.store.update_event(
            args[0], {"state": "dead", "last_error": reason}, dead_for=ev.get("tenant", "")
        )
        metrics.WEBHOOK_DEAD_LETTERS.inc()
        return
    job = await svc.store.get_job(args[0])
    if job is not None:
        await finish(svc, job, JobStatus.failed, error={"code": "internal", "message": reason})


# --------------------------------------------------------------------------- submit


def create_body(job: Fields, body: dict[str, Any], public_url: str | None) -> dict[str, Any]:
    """The create as sent: background on, store left at its default (true),
    and the job id as a label so an orphaned interaction can be matched."""
    body["background"] = True
    body.pop("store", None)
    labels = dict(body.get("labels") or {})
    labels["interq_job"] = job["id"]
    body["labels"] = labels
    if public_url:  # the upstream tells interq when the interaction ends
        config = dict(body.get("webhook_config") or {})
        config["uris"] = [*(config.get("uris") or []), public_url + "/v1/upstream/webhook"]
        config["user_metadata"] = {**(config.get("user_metadata") or {}), "interq_job": job["id"]}
        body["webhook_config"] = config
    return body


@guarded("submit")
async def submit(ctx: dict[str, Any], job_id: str) -> None:
    svc: Services = ctx["svc"]
    job = await svc.store.get_job(job_id)
    if job is None:
        return
    logs.bind(tenant=job.get("tenant"), batch_id=job.get("batch_id"))
    if job["status"] == JobStatus.queued:
        body = create_body(job, json.loads(job["request"]), svc.settings.public_url)
    elif job["status"] == JobStatus.running and job.get("pending_create"):
        body = create_body(job, json.loads(job["pending_create"]), svc.settings.public_url)
    else:
        return  # already submitted, or ended
    state = {JobStatus(job["status"])}
    same = {"interaction_id": job.get("interaction_id", "")}
    if time.time() > float(job["deadline"]):
        late = {"code": "deadline", "message": "job timed out before it was sent"}
        await finish(svc, job, JobStatus.expired, error=late)
        return
    wait = await svc.budgets.take_create(job.get("model", ""))
    if wait > 0:
        raise Retry(defer=wait)
    flags: Fields = {"create_inflight": "1"}
    if job.get("create_inflight") == "1":
        flags["possible_duplicate"] = "1"
        metrics.POSSIBLE_DUPLICATES.inc()
        log.warning("job %s: re-sending a create whose answer may have been lost", job_id)
    marked = await svc.store.transition(
        job_id, expect=state, cond=same, set_fields=flags, incr={"submit_attempts": 1}
    )
    if not marked.ok:
        return
    attempts = int(job.get("submit_attempts") or 0) + 1
    try:
        inter = await svc.upstream.create(body)
    except Retryable as e:
        if e.status_code == 429:
            await svc.budgets.cut(job.get("model", ""))
        if not e.maybe_sent:
            await svc.store.transition(
                job_id, expect=state, cond=same, set_fields={"create_inflight": "0"}
            )
        if attempts >= svc.settings.max_submit_attempts:
            await finish(
                svc,
                job,
                JobStatus.failed,
                error={"code": "upstream_unavailable", "message": e.message},
            )
            return
        raise Retry(defer=retry_delay(svc, e, attempts)) from None
    except Rejected as e:
        error: dict[str, Any] = {
            "code": "upstream_rejected",
            "status": e.status_code,
            "message": e.message,
        }
        await finish(svc, job, JobStatus.failed, error=error)
        return
    await record_interaction(svc, job, inter)


async def record_interaction(svc: Services, job: Fields, inter: dict[str, Any]) -> None:
    """Persist a new interaction id and schedule its first poll, atomically."""
    iid = str(inter["id"])
    now = time.time()
    chain = [*json.loads(job.get("interaction_ids") or "[]"), iid]
    out = await svc.store.transition(
        job["id"],
        expect={JobStatus(job["status"])},
        cond={"interaction_id": job.get("interaction_id", "")},
        status=JobStatus.running,
        set_fields={
            "interaction_id": iid,
            "interaction_ids": json.dumps(chain),
            "upstream_status": str(inter.get("status", "")),
            "create_inflight": "0",
            "pending_create": "",
            "submit_attempts": "0",
            "submitted_at": f"{now:.3f}",
        },
        steps=[poll_step(job["id"], iid, poll_interval(svc, 0), float(job["deadline"]))],
    )
    if out.ok:
        log.info("job %s: interaction %s created", job["id"], iid)
        if job["status"] == JobStatus.queued:
            metrics.QUEUE_WAIT.observe(now - float(job["created_at"]))
        if svc.settings.public_url:
            ttl = int(float(job["deadline"]) - now) + 86_400
            await svc.store.remember_interaction(iid, job["id"], ttl)
        return
    # Cancelled while the create was in flight: keep the id, cancel it upstream too.
    log.info("job %s was %s during create; cancelling %s upstream", job["id"], out.previous, iid)
    await svc.store.set_fields(
        job["id"], {"interaction_id": iid, "interaction_ids": json.dumps(chain)}
    )
    try:
        await svc.upstream.cancel(iid)
    except UpstreamError as e:
        log.warning("job %s: upstream cancel of %s failed: %s", job["id"], iid, e.message)


# --------------------------------------------------------------------------- poll


@guarded("poll")
async def poll(ctx: dict[str, Any], job_id: str, interaction_id: str) -> None:
    svc: Services = ctx["svc"]
    tries = int(ctx.get("job_try", 1))
    job = await svc.store.get_job(job_id)
    if job is None or job.get("interaction_id") != interaction_id:
        return  # stale: the job moved on
    logs.bind(tenant=job.get("tenant"), batch_id=job.get("batch_id"))
    if job["status"] == JobStatus.requires_action and time.time() > float(job["deadline"]):
        await expire(svc, job)  # paused past its deadline
        return
    if job["status"] != JobStatus.running:
        return
    if job.get("cancel_requested") == "1" and job.get("cancel_sent") != "1":
        if await send_cancel(svc, job):
            return
    elif time.time() > float(job["deadline"]):
        await expire(svc, job)
        return
    try:
        inter = await svc.upstream.get(interaction_id)
    except Retryable as e:
        raise Retry(defer=retry_delay(svc, e, tries)) from None
    except NotFound as e:
        since = time.time() - float(job.get("submitted_at") or 0)
        if since < svc.settings.not_found_grace_s:
            raise Retry(defer=poll_interval(svc, 0)) from None
        await finish(
            svc,
            job,
            JobStatus.failed,
            error={"code": "interaction_not_found", "message": e.message},
        )
        return
    except Rejected as e:
        await finish(
            svc,
            job,
            JobStatus.failed,
            error={"code": "upstream_rejected", "status": e.status_code, "message": e.message},
        )
        return
    metrics.POLLS.labels(model=metrics.model_label(job.get("model"))).inc()
    status = inter["status"]
    kind = classify_upstream(status)
    if kind == "terminal":
        await store_result(svc, job, inter)
        err = interactions.errors(inter) if status == "failed" else None
        if status == "failed" and err is None:
            err = {"code": "upstream_failed", "message": "the interaction failed upstream"}
        note = (
            "upstream cancel was requested"
            if status == "cancelled" and job.get("cancel_requested") == "1"
            else None
        )
        await finish(svc, job, UPSTREAM_TERMINAL[status], interaction=inter, error=err, note=note)
        return
    if kind == "pending" and status not in UPSTREAM_KNOWN and job.get("unknown_logged") != status:
        metrics.UNKNOWN_UPSTREAM_STATUS.inc()
        log.warning("job %s: unknown upstream status %r, still polling", job_id, status)
        await svc.store.set_fields(job_id, {"unknown_logged": status})
    if kind == "action":
        await store_result(svc, job, inter)
        await pause(svc, job, inter)
        return
    if kind == "continuation":
        await continue_decoding(svc, job, inter)
        return
    polls = int(job.get("poll_count") or 0)
    await svc.store.set_fields(job_id, {"upstream_status": status}, incr={"poll_count": 1})
    raise Retry(defer=poll_interval(svc, polls + 1))


async def continue_decoding(svc: Services, job: Fields, inter: dict[str, Any]) -> None:
    """``requires_continuation``: send the token back, unchanged, in a new
    create chained to this interaction (no input: the upstream stored it)."""
    await store_result(svc, job, inter)
    token = inter.get("continuation_token")
    if not isinstance(token, str) or not token:
        note = "upstream asked for continuation without a continuation_token"
        await finish(svc, job, JobStatus.incomplete, interaction=inter, note=note)
        return
    partial = interactions.output_text(inter) or ""
    body = follow_up_body(job, inter, continuation_token=token)
    await chain(svc, job, JobStatus.running, body, output_prefix=partial)


async def send_cancel(svc: Services, job: Fields) -> bool:
    """Send the upstream cancel for a job whose cancel was requested. Returns
    True when the job was finished here (cancel unsupported upstream)."""
    iid = job["interaction_id"]
    try:
        await svc.upstream.cancel(iid)
    except NotFound:
        attempts = int(job.get("cancel_attempts") or 0) + 1
        await svc.store.set_fields(job["id"], {"cancel_attempts": str(attempts)})
        if attempts < CANCEL_404_MAX_TRIES:
            raise Retry(defer=2.0 * attempts) from None
        await finish(
            svc,
            job,
            JobStatus.cancelled,
            note="upstream cancel answered 404; the interaction may still run upstream",
        )
        return True
    except Retryable as e:
        raise Retry(defer=retry_delay(svc, e, int(job.get("cancel_attempts") or 0) + 1)) from None
    except Rejected as e:
        log.info(
            "job %s: upstream refused cancel (%s); polling for the outcome", job["id"], e.message
        )
    await svc.store.set_fields(job["id"], {"cancel_sent": "1"})
    return False


async def expire(svc: Services, job: Fields) -> None:
    try:
        await svc.upstream.cancel(job["interaction_id"])
    except UpstreamError as e:
        log.info("job %s: cancel at deadline failed: %s", job["id"], e.message)
    await finish(
        svc,
        job,
        JobStatus.expired,
        error={"code": "deadline", "message": "job passed its timeout_s"},
    )


# --------------------------------------------------------------------------- deliver


@guarded("deliver")
async def deliver(ctx: dict[str, Any], event_id: str) -> None:
    svc: Services = ctx["svc"]
    ev = await svc.store.get_event(event_id)
    if ev is None or ev.get("state") != "pending":
        return
    owner = await svc.store.get_hash(ev.get("owner") or f"job:{ev['job_id']}")
    target = await endpoints.target_for(svc, owner) if owner else None
    if target is None:
        await svc.store.update_event(event_id, {"state": "no_endpoint"})
        return
    attempt = int(ev.get("attempts") or 0) + 1
    in_round = int(ev.get("round_attempts") or 0) + 1
    res = await webhooks.post(
        svc.http, target.url, target.secrets, event_id, ev["body"].encode(), svc.webhook_policy
    )
    metrics.WEBHOOK_DELIVERIES.labels(outcome=res.outcome).inc()
    metrics.WEBHOOK_LATENCY.observe(res.duration_s)
    now = time.time()
    await svc.store.log_attempt(
        event_id,
        {
            "attempt": attempt,
            "at": now,
            "url": target.url,
            "outcome": res.outcome,
            "status_code": res.status_code,
            "error": res.error,
            "duration_s": round(res.duration_s, 4),
        },
    )
    fields: Fields = {
        "attempts": str(attempt),
        "round_attempts": str(in_round),
        "last_attempt_at": f"{now:.3f}",
        "last_error": res.error or "",
    }
    if res.outcome in ("delivered", "gone"):
        fields["state"] = res.outcome
        await svc.store.update_event(event_id, fields)
        return
    cfg = svc.settings
    delay = webhooks.next_delay(cfg.webhook_schedule_s, in_round, cfg.webhook_jitter)
    if delay is None:
        fields["state"] = "dead"
        await svc.store.update_event(event_id, fields, dead_for=ev.get("tenant", ""))
        metrics.WEBHOOK_DEAD_LETTERS.inc()
        log.warning("event %s dead-lettered after %d attempts", event_id, attempt)
        return
    await svc.store.update_event(event_id, fields)
    raise Retry(defer=delay)


async def cancel_paused(svc: Services, job: Fields) -> None:
    """Cancel a job waiting in ``requires_action``: nothing runs upstream, so it
    ends at once (the upstream cancel is best effort)."""
    try:
        await svc.upstream.cancel(job["interaction_id"])
    except UpstreamError as e:
        log.info("job %s: upstream cancel of a paused interaction: %s", job["id"], e.message)
    await finish(svc, job, JobStatus.cancelled, expect={JobStatus.requires_action})
