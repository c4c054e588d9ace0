"""The arq steps: ``submit`` (and ``batch_done`` in batches.py). Each is
short and idempotent. Polls and webhook deliveries are not arq jobs: the poll
engine (``poller.py``) and the delivery engine (``delivery.py``) work them
from due-time indexes.

``submit(job_id)`` sends the create once, then records the interaction id and
puts the job in the poll index in one atomic step. A re-run that finds the job
no longer ``queued`` does nothing. A re-run that finds ``create_inflight`` set
knows an earlier create may have reached the upstream with its answer lost: it
re-sends and flags the job ``possible_duplicate``. Right before the create
goes it takes its model's window token and, for a follow-up of a job already
running (not dispatched), a hit on its tenant's creates per minute; short of
either, the step defers (arq's ``Retry``) and the job stays as it is.

Errors are counted as errors: a budget wait or a retried 429 is not a fault.
An unexpected exception counts in the job's ``submit_faults`` (consecutive,
reset when the create is recorded); after ``STEP_GUARD_MAX_TRIES`` the job
fails as ``internal``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from arq import Retry

from jobs.domain import tenants
from jobs.domain.lifecycle import finish
from jobs.domain.records import Job, JobUpdate
from jobs.domain.statuses import JobStatus
from jobs.observe import logs, metrics, tracing
from jobs.services import Services
from jobs.storage.keys import Keys
from jobs.upstream.client import KeyRefused, QuotaExhausted, Retryable, UpstreamError, daily_reset
from jobs.work import tenant_gate
from jobs.work.clock import SYSTEM, Clock

log = logging.getLogger("interq.steps")

STEP_GUARD_MAX_TRIES = 25  # unexpected errors in one step before it gives up
STEP_BUDGET_SHARE = 0.8  # of INTERQ_STEP_TIMEOUT_S: a step times itself out before arq does


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


def fault_delay(svc: Services, faults: int) -> float:
    """Backoff after the n-th unexpected error in a row (a bug, Redis trouble)."""
    s = svc.settings
    return float(min(s.retry_max_s, s.retry_initial_s * 2.0 ** max(faults - 1, 0)))


# --------------------------------------------------------------------------- guard


StepFn = Callable[..., Coroutine[Any, Any, None]]
# How a guarded step counts its consecutive unexpected errors: (svc, args) -> count
FaultCounter = Callable[[Services, tuple[str, ...]], Coroutine[Any, Any, int]]


async def submit_faults(svc: Services, args: tuple[str, ...]) -> int:
    """One more unexpected error of this job's submit (reset when the create
    is recorded): the count lives on the job record, not in arq's tries,
    which also count every budget wait and every retried 429."""
    key = svc.store.keys.job(args[0])
    if not await svc.redis.exists(key):
        return 0
    return int(await svc.redis.hincrby(key, "submit_faults", 1))  # type: ignore[misc]


def guarded(name: str, count_fault: FaultCounter) -> Callable[[StepFn], StepFn]:
    """An unexpected exception in a step is logged and retried with backoff,
    never left to kill the job: after too many in a row, the job fails visibly."""

    def wrap(fn: StepFn) -> StepFn:
        @functools.wraps(fn)
        async def inner(ctx: dict[str, Any], *args: str) -> None:
            logs.clear()
            logs.bind(job_id=args[0])
            svc: Services = ctx["svc"]
            budget = svc.settings.step_timeout_s * STEP_BUDGET_SHARE
            try:
                async with asyncio.timeout(budget):
                    await fn(ctx, *args)
            except Retry:
                raise
            except Exception as e:
                # a step that runs long (Redis down, a slow upstream) retries
                # too: arq treats its own timeout as final and drops the job
                metrics.STEP_ERRORS.labels(step=name).inc()
                what = f"ran past {budget:.1f} s" if isinstance(e, TimeoutError) else "failed"
                log.warning(
                    "step %s%s %s", name, args, what, exc_info=not isinstance(e, TimeoutError)
                )
                try:
                    faults = await count_fault(svc, args)
                except Exception:  # Redis is down too: back off and try again
                    raise Retry(defer=5.0) from None
                if faults < STEP_GUARD_MAX_TRIES:
                    raise Retry(defer=fault_delay(svc, faults)) from None
                await give_up(svc, args, f"{type(e).__name__}: {e}")

        return inner

    return wrap


async def give_up(svc: Services, args: tuple[str, ...], reason: str) -> None:
    job = await svc.store.get_job(args[0])
    if job is not None:
        await finish(svc, job, JobStatus.failed, error={"code": "internal", "message": reason})


# --------------------------------------------------------------------------- submit

BACKPRESSURE_LAG_S = 1.0  # the poll engine this late on average: hold new creates
BACKPRESSURE_MAX_S = 10.0  # at most this long per submit
BACKPRESSURE_CHECK_S = 0.05


async def wait_for_polls(ctx: dict[str, Any]) -> None:
    """Admission control: while this worker's poll engine is behind, a new
    create waits (in its slot, so arq takes no more), because every
    interaction started now is polled by the same engine. Running
    interactions' polls come first; a burst of creates cannot make them late."""
    engine = ctx.get("poller")
    if engine is None:
        return
    waited = 0.0
    while engine.lag_avg > BACKPRESSURE_LAG_S and waited < BACKPRESSURE_MAX_S:
        await asyncio.sleep(BACKPRESSURE_CHECK_S)
        waited += BACKPRESSURE_CHECK_S


def create_body(job: Job, body: dict[str, Any], public_url: str | None) -> dict[str, Any]:
    """The create as sent: background on, store left at its default (true),
    and the job id as a label so an orphaned interaction can be matched."""
    body["background"] = True
    body.pop("store", None)
    labels = dict(body.get("labels") or {})
    labels["interq_job"] = job.id
    body["labels"] = labels
    if public_url:  # the upstream tells interq when the interaction ends
        config = dict(body.get("webhook_config") or {})
        config["uris"] = [*(config.get("uris") or []), public_url + "/v1/upstream/webhook"]
        config["user_metadata"] = {**(config.get("user_metadata") or {}), "interq_job": job.id}
        body["webhook_config"] = config
    return body


@guarded("submit", submit_faults)
async def submit(ctx: dict[str, Any], job_id: str) -> None:
    svc: Services = ctx["svc"]
    clock: Clock = ctx.get("clock", SYSTEM)
    job = await svc.store.get_job(job_id)
    if job is None:
        return
    logs.bind(tenant=job.tenant or None, batch_id=job.batch_id or None)
    if job.status == JobStatus.queued:
        body = create_body(job, job.body(), svc.settings.public_url)
    elif job.status == JobStatus.running and job.pending_create:
        body = create_body(job, job.body(job.pending_create), svc.settings.public_url)
    else:
        return  # already submitted, or ended
    state, same = job.status, job.interaction_id
    if clock.time() > job.deadline:
        late = {"code": "deadline", "message": "job timed out before it was sent"}
        await finish(svc, job, JobStatus.expired, error=late)
        return
    await wait_for_polls(ctx)
    await wait_while_paused(ctx, svc, job, clock)
    wait = await take_budgets(svc, job, follow_up=state == JobStatus.running)
    if wait > 0:
        raise Retry(defer=wait)
    flags: JobUpdate = {"create_inflight": True}
    if job.create_inflight:
        flags["possible_duplicate"] = True
        metrics.POSSIBLE_DUPLICATES.inc()
        log.warning("job %s: re-sending a create whose answer may have been lost", job_id)
    marked = await svc.store.set_flags(
        job_id, state, flags, interaction_id=same, incr={"submit_attempts": 1}
    )
    if not marked.ok:
        return
    if state == JobStatus.queued:
        tracing.queued_span(job)
    with tracing.job_span("interq.create", job, **{"interq.attempt": job.submit_attempts + 1}):
        try:
            inter = await svc.upstream.create(body)
        except UpstreamError as e:
            await create_failed(ctx, svc, job, e, clock)
            return
        await svc.budgets.key_ok()
        await record_interaction(svc, job, inter, clock)


async def take_budgets(svc: Services, job: Job, *, follow_up: bool) -> float:
    """Right before the create: its model's window token (``budgets.py``),
    and for a follow-up, not dispatched so not counted then, a hit on its
    tenant's creates per minute (``tenant_gate.py``). Returns 0 when taken,
    else how long to wait. The tenant's window is looked at first: a
    follow-up waiting for it takes no model token."""
    if follow_up:
        wait = await tenant_gate.follow_up_wait(svc, job.tenant)
        if wait > 0:
            return wait
    wait = await svc.budgets.take_create(job.model, job.id)
    if wait > 0 or not follow_up:
        return wait
    return await tenant_gate.take_follow_up(svc, job.tenant)


# --------------------------------------------------------------------------- pauses

PAUSE_RECHECK_S = 30.0  # a paused submit looks again this often (a hold lifted early)
ARQ_EXPIRY_S = 86_400.0  # what a deferred submit's arq job is kept for beyond its defer


async def park(ctx: dict[str, Any], svc: Services, wait_s: float) -> float:
    """How long a paused submit defers (at most ``PAUSE_RECHECK_S``). arq
    keeps a job's key only a day from its enqueue, and a Retry does not renew
    it: a hold until midnight could outlast it, so the key's expiry is pushed
    out by each wait."""
    defer = max(0.05, min(wait_s, PAUSE_RECHECK_S)) * random.uniform(1.0, 1.1)
    arq_id = ctx.get("job_id")
    if isinstance(arq_id, str):
        await svc.redis.pexpire(Keys.arq_job(arq_id), int((defer + ARQ_EXPIRY_S) * 1000))
    return defer


async def wait_while_paused(ctx: dict[str, Any], svc: Services, job: Job, clock: Clock) -> None:
    """No create while the job's model is held for a per-day quota, its
    tenant for its daily tokens (``jobs/domain/tenants.py``), or the upstream
    key is refused: defer (no attempt counted), look again later."""
    now = clock.time()
    until = await svc.budgets.held_until(job.model, now)
    if not until and svc.settings.tenant_limit_for(job.tenant).tokens_per_day:
        until = await tenants.held_until(svc, job.tenant, now)
    if until:
        raise Retry(defer=await park(ctx, svc, until - now))
    refused = await svc.budgets.key_unhealthy()
    if refused:
        raise Retry(defer=await park(ctx, svc, refused))


async def not_counted(svc: Services, job: Job) -> None:
    """Undo the attempt the create counted, and its in-flight mark: the
    create was refused for a reason that is not the job's (no run upstream)."""
    await svc.store.set_flags(
        job.id,
        job.status,
        {"create_inflight": False},
        interaction_id=job.interaction_id,
        incr={"submit_attempts": -1},
    )


async def create_failed(
    ctx: dict[str, Any], svc: Services, job: Job, e: UpstreamError, clock: Clock
) -> None:
    """What a failed create means: a Retry (raised), or the job finished."""
    attempts = job.submit_attempts + 1
    if isinstance(e, QuotaExhausted):
        until = daily_reset(clock.time())
        await svc.budgets.hold(job.model, until)
        await not_counted(svc, job)
        log.warning(
            "job %s: per-day quota %s exhausted for %s; dispatch held until %.0f",
            job.id,
            e.quota_id,
            job.model,
            until,
        )
        raise Retry(defer=await park(ctx, svc, until - clock.time()))
    if isinstance(e, KeyRefused):
        await svc.budgets.key_refused()
        log.warning("job %s: upstream refused the API key (%s)", job.id, e.status_code)
        if await svc.budgets.key_trusted():  # it worked lately: a rotation, a revocation
            await not_counted(svc, job)
            raise Retry(defer=await park(ctx, svc, PAUSE_RECHECK_S))
    if isinstance(e, Retryable):
        await create_retry(svc, job, e, attempts)
        return
    error: dict[str, Any] = {"code": "upstream_rejected", "status": e.status_code}
    error["message"] = e.message
    await finish(svc, job, JobStatus.failed, error=error)


async def create_retry(svc: Services, job: Job, e: Retryable, attempts: int) -> None:
    """A retryable create: raise the Retry, or finish the job after the last."""
    if e.status_code == 429:
        await svc.budgets.cut(job.model)
    if not e.maybe_sent:
        await svc.store.set_flags(
            job.id, job.status, {"create_inflight": False}, interaction_id=job.interaction_id
        )
    if attempts < svc.settings.max_submit_attempts:
        raise Retry(defer=retry_delay(svc, e, attempts))
    error = {"code": "upstream_unavailable", "message": e.message}
    await finish(svc, job, JobStatus.failed, error=error)


async def record_interaction(
    svc: Services, job: Job, inter: dict[str, Any], clock: Clock = SYSTEM
) -> None:
    """Persist a new interaction id and schedule its first poll, atomically."""
    iid = str(inter["id"])
    now = clock.time()
    chain = [*job.interaction_ids, iid]
    out = await svc.store.start(
        job,
        {
            "interaction_id": iid,
            "interaction_ids": chain,
            "upstream_status": str(inter.get("status", "")),
            "create_inflight": False,
            "pending_create": "",
            "submit_attempts": 0,
            "submit_faults": 0,
            "poll_errors": 0,
            "submitted_at": now,
        },
        poll_at=now + poll_interval(svc, 0),
    )
    if out.ok:
        log.info("job %s: interaction %s created", job.id, iid)
        if job.status == JobStatus.queued:
            metrics.QUEUE_WAIT.observe(now - job.created_at)
        if svc.settings.public_url:
            ttl = int(job.deadline - now) + 86_400
            await svc.store.remember_interaction(iid, job.id, ttl)
        return
    # Cancelled while the create was in flight: keep the id, cancel it upstream too.
    log.info("job %s was %s during create; cancelling %s upstream", job.id, out.previous, iid)
    await svc.store.set_fields(job.id, {"interaction_id": iid, "interaction_ids": chain})
    try:
        await svc.upstream.cancel(iid)
    except UpstreamError as e:
        log.warning("job %s: upstream cancel of %s failed: %s", job.id, iid, e.message)


# --------------------------------------------------------------------------- old steps


async def poll(ctx: dict[str, Any], job_id: str, interaction_id: str) -> None:
    """An arq ``poll`` step queued by a version before the poll engine: the
    job joins the poll index, due now (the engine takes it from there)."""
    await ctx["svc"].store.poke_or_add(job_id)


async def deliver(ctx: dict[str, Any], event_id: str) -> None:
    """An arq ``deliver`` step queued before the delivery engine: the event
    joins the delivery index, due now."""
    await ctx["svc"].store.deliver_now(event_id)
