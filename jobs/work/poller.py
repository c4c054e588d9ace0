"""The poll engine: the next GET of every running interaction, from one loop
per worker (the machinery is ``engine.DueEngine``).

Running jobs wait in the poll index ``{p}:polls`` (job id -> due ms), put there
by the transition that recorded their interaction. The engine claims due jobs
in batches under a lease, reads their records in one pipelined round trip,
sends the GETs concurrently (``INTERQ_POLL_CONCURRENCY`` at most) and writes the
pending ones back (next due time, upstream status, counters) in one pipelined
round trip, each through ``lua/reschedule_poll.lua`` (a job that moved on is
left alone). A poll that ends, pauses or chains the job goes through the
transitions of ``outcomes.py``, which take it out of the index or move it.

Errors are counted as errors. ``poll_errors`` counts consecutive transient
failures (429, 5xx, timeouts, junk answers: a cut-off JSON body, an HTML error
page, a body without ``status``) and sets the backoff; a good answer resets it.
Polls that find the interaction still running are not failures. A 401/403
(the upstream refused the API key) flags the key unhealthy and is polled again
like a transient error: the job stays running, as it does upstream. An unexpected
exception counts in ``poll_faults``; after ``STEP_GUARD_MAX_TRIES`` in a row the
job fails as ``internal``.

A result is attached only when it carries the job's label
(``labels.interq_job``): an interaction that names another job is never stored;
it is counted, logged, and the job's create is sent again as for a lost one.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from jobs.domain.cancel import upstream_cancel
from jobs.domain.lifecycle import chain, finish, follow_up_body, pause, store_result, submit_step
from jobs.domain.records import Job, JobUpdate, job_fields
from jobs.domain.statuses import UPSTREAM_KNOWN, UPSTREAM_TERMINAL, JobStatus, classify_upstream
from jobs.observe import logs, metrics, tracing
from jobs.services import Services
from jobs.storage.scripts import lua
from jobs.upstream import answers as interactions
from jobs.upstream.client import KeyRefused, NotFound, Rejected, Retryable
from jobs.work.clock import SYSTEM, Clock
from jobs.work.engine import DueEngine, Write
from jobs.work.steps import STEP_GUARD_MAX_TRIES, fault_delay, poll_interval, retry_delay

log = logging.getLogger("interq.poller")

CANCEL_404_MAX_TRIES = 3
MAX_RELAUNCHES = 5  # creates re-sent after answers that carried another job's label
LABEL = "interq_job"
IDLE_MAX_S = 0.05  # with nothing due, look again this soon (an entry added or poked)


@dataclass
class Next:
    """A pending poll: due again ``delay_s`` after ``base`` (epoch seconds;
    when the GET was sent, so that its round trip does not stretch the
    schedule; 0 means now), with these fields written."""

    delay_s: float
    fields: JobUpdate
    base: float = 0.0


DROP = Next(-1.0, {})  # the entry is stale: leave the index if the job ended


class PollEngine(DueEngine):
    def __init__(self, svc: Services, clock: Clock = SYSTEM) -> None:
        cfg = svc.settings
        super().__init__(
            redis=svc.redis,
            index=svc.store.keys.polls,
            capacity=cfg.poll_concurrency,
            batch=cfg.poll_batch,
            lease_s=cfg.poll_lease_s,
            idle_s=min(cfg.worker_poll_delay_s, IDLE_MAX_S),
            task_timeout_s=cfg.step_timeout_s * 0.8,
            name="poller",
            clock=clock,
        )
        self.svc = svc
        self._write = svc.redis.register_script(lua("reschedule_poll"))

    def write_script(self) -> Any:
        return self._write

    def observe_lag(self, lags: list[float]) -> None:
        for lag in lags:
            metrics.POLL_LAG.observe(lag)
        metrics.ENGINE_LAG.labels(engine="poller").set(self.lag_avg)
        metrics.ENGINE_OVERLOADED.labels(engine="poller").set(int(self.overloaded))
        metrics.ENGINE_ACTIVE.labels(engine="poller").set(len(self.active))

    async def prefetch(self, members: list[str]) -> list[Any]:
        return await self.svc.store.get_jobs(members) if members else []

    async def handle(self, member: str, lag_s: float, record: Any) -> Write | None:
        job: Job | None = record
        if job is None:
            return self._write_for(member, "", DROP)
        logs.clear()
        logs.bind(job_id=member, interaction_id=job.interaction_id)
        logs.bind(tenant=job.tenant, batch_id=job.batch_id)
        try:
            nxt = await poll_job(self.svc, job, self.clock)
        except Exception as e:
            nxt = await self._fault(job, e)
        if nxt is None:
            return None
        if nxt is not DROP:
            nxt.delay_s += random.uniform(0.0, self.spread())
            if job.poll_faults and "poll_faults" not in nxt.fields:
                nxt.fields["poll_faults"] = 0
        return self._write_for(member, job.interaction_id, nxt)

    def _write_for(self, job_id: str, iid: str, nxt: Next) -> Write:
        due = (
            "" if nxt is DROP else str(int(((nxt.base or self.clock.time()) + nxt.delay_s) * 1000))
        )
        flat: list[str | int | float] = [job_id, iid, due]
        for k, v in job_fields(nxt.fields).items():
            flat += [k, v]
        return Write([self.svc.store.keys.job(job_id), self.index], flat)

    async def _fault(self, job: Job, e: Exception) -> Next | None:
        metrics.STEP_ERRORS.labels(step="poll").inc()
        faults = job.poll_faults + 1
        log.exception("poll of job %s failed unexpectedly (%d in a row)", job.id, faults)
        if faults < STEP_GUARD_MAX_TRIES:
            return Next(fault_delay(self.svc, faults), {"poll_faults": faults})
        reason = f"{type(e).__name__}: {e}"
        await finish(self.svc, job, JobStatus.failed, error={"code": "internal", "message": reason})
        return None


# --------------------------------------------------------------------------- one poll


async def poll_job(svc: Services, job: Job, clock: Clock = SYSTEM) -> Next | None:
    """Poll one job once. Returns where its entry goes next, or None when a
    transition (end, pause, chain) has already moved it."""
    with tracing.job_span("interq.poll", job, **{"interq.poll": job.poll_count + 1}):
        return await _poll_job(svc, job, clock)


async def _poll_job(svc: Services, job: Job, clock: Clock) -> Next | None:
    status, iid = job.status, job.interaction_id
    now = clock.time()
    deadline = job.deadline
    if status == JobStatus.requires_action:
        if now > deadline:
            await expire(svc, job)  # paused past its deadline
            return None
        return Next(deadline - now, {})
    if status != JobStatus.running or not iid:
        return DROP
    if job.cancel_requested and not job.cancel_sent:
        after_cancel = await send_cancel(svc, job)
        if after_cancel is not None:
            return after_cancel if after_cancel.delay_s >= 0 else None
    elif now > deadline:
        await expire(svc, job)
        return None
    sent = clock.time()
    try:
        inter = await svc.upstream.get(iid)
    except Retryable as e:
        errors = job.poll_errors + 1
        note: JobUpdate = {"poll_errors": errors, "last_poll_error": e.message[:200]}
        return Next(retry_delay(svc, e, errors), note)
    except KeyRefused as e:
        # the key, not the job: poll again later, the job stays running
        await svc.budgets.key_refused()
        errors = job.poll_errors + 1
        note = {"poll_errors": errors, "last_poll_error": f"{e.status_code}: {e.message}"[:200]}
        return Next(retry_delay(svc, Retryable(e.message), errors), note)
    except NotFound as e:
        if now - (job.submitted_at or 0) < svc.settings.not_found_grace_s:
            return Next(poll_interval(svc, 0), {})
        error = {"code": "interaction_not_found", "message": e.message}
        await finish(svc, job, JobStatus.failed, error=error)
        return None
    except Rejected as e:
        refused: dict[str, Any] = {"code": "upstream_rejected", "message": e.message}
        refused["status"] = e.status_code
        await finish(svc, job, JobStatus.failed, error=refused)
        return None
    await svc.budgets.key_ok()
    if not carries_label(inter, job.id):
        await relaunch(svc, job, inter)
        return None
    nxt = await apply_answer(svc, job, inter)
    if nxt is not None:
        nxt.base = sent
    return nxt


def carries_label(inter: dict[str, Any], job_id: str) -> bool:
    labels = inter.get("labels")
    return isinstance(labels, dict) and labels.get(LABEL) == job_id


async def apply_answer(svc: Services, job: Job, inter: dict[str, Any]) -> Next | None:
    """What an interaction's status means for the job."""
    metrics.POLLS.labels(model=metrics.model_label(job.model)).inc()
    status = inter["status"]
    kind = classify_upstream(status)
    if kind == "terminal":
        await store_result(svc, job, inter)
        err = interactions.errors(inter) if status == "failed" else None
        if status == "failed" and err is None:
            err = {"code": "upstream_failed", "message": "the interaction failed upstream"}
        note = None
        if status == "cancelled" and job.cancel_requested:
            note = "upstream cancel was requested"
        await finish(svc, job, UPSTREAM_TERMINAL[status], interaction=inter, error=err, note=note)
        return None
    if kind == "action":
        await store_result(svc, job, inter)
        await pause(svc, job, inter)
        return None
    if kind == "continuation":
        await continue_decoding(svc, job, inter)
        return None
    fields: JobUpdate = {"upstream_status": status, "poll_errors": 0}
    if status not in UPSTREAM_KNOWN and job.unknown_logged != status:
        metrics.UNKNOWN_UPSTREAM_STATUS.inc()
        log.warning("job %s: unknown upstream status %r, still polling", job.id, status)
        fields["unknown_logged"] = status
    polls = job.poll_count + 1
    fields["poll_count"] = polls
    return Next(poll_interval(svc, polls), fields)


async def relaunch(svc: Services, job: Job, inter: dict[str, Any]) -> None:
    """The interaction answered with another job's label: it is not this
    job's (an upstream that reused an id, a mix-up). Never attach it; send
    this job's create again, as for a lost interaction."""
    metrics.LABEL_MISMATCHES.inc()
    labels = inter.get("labels")
    found = labels.get(LABEL) if isinstance(labels, dict) else None
    n = job.relaunches + 1
    log.warning(
        "job %s: interaction %s carries label %s=%r, not this job's: not attached (%d)",
        job.id,
        job.interaction_id or None,
        LABEL,
        found,
        n,
    )
    if n > MAX_RELAUNCHES:
        error = {
            "code": "interaction_lost",
            "message": f"{MAX_RELAUNCHES} interactions answered with another job's label",
        }
        await finish(svc, job, JobStatus.failed, error=error)
        return
    body = job.body(job.hop_body or job.request)
    changes: JobUpdate = {"pending_create": json.dumps(body), "relaunches": n}
    step = submit_step(job.id, n=len(job.interaction_ids))
    await svc.store.resume(job, JobStatus.running, changes, step)


async def continue_decoding(svc: Services, job: Job, inter: dict[str, Any]) -> None:
    """``requires_continuation``: send the token back, unchanged, in a new
    create chained to this interaction (no input: the upstream stored it)."""
    await store_result(svc, job, inter)
    token = inter.get("continuation_token")
    if not isinstance(token, str) or not token:
        note = "upstream asked for continuation without a continuation_token"
        await finish(svc, job, JobStatus.incomplete, interaction=inter, note=note)
        return
    body = follow_up_body(job, inter, continuation_token=token)
    await chain(svc, job, JobStatus.running, body, ended=inter)


async def send_cancel(svc: Services, job: Job) -> Next | None:
    """Send the upstream cancel of a job whose cancel was requested. Returns
    None once it was sent (poll on), a ``Next`` to try again later, or a
    negative-delay ``Next`` when the job was finished here."""
    try:
        await svc.upstream.cancel(job.interaction_id)
    except NotFound:
        attempts = job.cancel_attempts + 1
        if attempts < CANCEL_404_MAX_TRIES:
            return Next(2.0 * attempts, {"cancel_attempts": attempts})
        note = "upstream cancel answered 404; the interaction may still run upstream"
        await finish(svc, job, JobStatus.cancelled, note=note)
        return Next(-1.0, {})
    except Retryable as e:
        attempts = job.cancel_attempts + 1
        return Next(retry_delay(svc, e, attempts), {"cancel_attempts": attempts})
    except Rejected as e:
        log.info("job %s: upstream refused cancel (%s); polling for the outcome", job.id, e)
    await svc.store.set_fields(job.id, {"cancel_sent": True})
    return None


async def expire(svc: Services, job: Job) -> None:
    await upstream_cancel(svc, job, "at the deadline")
    error = {"code": "deadline", "message": "job passed its timeout_s"}
    await finish(svc, job, JobStatus.expired, error=error)
