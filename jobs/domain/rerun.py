"""Run again what ended without an answer: one job, or a batch's lines by status.

A rerun keeps the job: its id, request, custom id, metadata, webhook and place
in its batch (so a batch's results keep their ids and order). Its record is
replaced by a fresh one, queued in its dispatch lane with a new deadline (the
same timeout from now), and the attempt that ended is kept, summarised, in
``attempts`` (its stored result stays under the job's folder). One Lua script
does it per job (``rerun.lua``: compare-and-set on the status and the attempt
number), so two reruns of one attempt make one new attempt, and a batch that
had ended is in progress again with its ``done`` count taken back.

With an ``Idempotency-Key`` a repeat answers what the first call did and
changes nothing: a job rerun's key is checked in the script itself; a batch
rerun's key holds the first call's answer.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from jobs.domain import batches
from jobs.domain.records import Batch, Job
from jobs.domain.statuses import JobStatus
from jobs.errors import Conflict
from jobs.observe import metrics
from jobs.services import Services
from jobs.storage.keys import lane_of
from jobs.storage.scripts import pairs, register

RERUNNABLE = frozenset(
    {JobStatus.failed, JobStatus.expired, JobStatus.cancelled, JobStatus.incomplete}
)
BATCH_DEFAULT = (JobStatus.failed, JobStatus.expired)
CHUNK = 500  # jobs read and rerun per round trip of a batch rerun
RUNNING_MARK_S = 600  # a batch rerun's Idempotency-Key while it runs (then its answer)


def attempt_summary(job: Job) -> dict[str, Any]:
    """What the attempts list keeps of an attempt that ended."""
    return {
        "attempt": job.attempt,
        "status": job.status.value,
        "upstream_status": job.upstream_status or None,
        "error": job.error,
        "note": job.note or None,
        "interaction_ids": job.interaction_ids,
        "usage": job.usage,
        "possible_duplicate": job.possible_duplicate,
        "submitted_at": job.submitted_at,
        "finished_at": job.finished_at,
        "result_key": job.result_key or None,
        "cost_nano_usd": job.cost_nano_usd,
    }


def fresh(job: Job, now: float) -> Job:
    """The record of the job's next attempt."""
    timeout = max(job.deadline - job.created_at, 1.0)
    return Job(
        id=job.id,
        status=JobStatus.queued,
        tenant=job.tenant,
        seq=job.seq,
        created_at=job.created_at,
        updated_at=now,
        deadline=now + timeout,
        request=job.request,
        model=job.model,
        metadata=job.metadata,
        custom_id=job.custom_id,
        webhook_url=job.webhook_url,
        webhook_secret=job.webhook_secret,
        batch_id=job.batch_id,
        idem_key=job.idem_key,
        attempt=job.attempt + 1,
        attempts=[*job.attempts, attempt_summary(job)],
        earlier_cost_nano_usd=job.earlier_cost_nano_usd + (job.cost_nano_usd or 0),
        extra=dict(job.extra),
    )


def _idem_key(svc: Services, tenant: str, scope: str, key: str) -> str:
    digest = hashlib.sha256(f"rerun:{scope}:{key}".encode()).hexdigest()
    return svc.store.keys.idem(tenant, digest)


async def rerun_job(
    svc: Services, job: Job, idempotency_key: str | None = None, *, pipe: Any = None
) -> str:
    """Queue the job's next attempt. Returns "rerun", "replayed" (the key was
    used: nothing changed) or "changed" (it is no longer the attempt that was
    read). With ``pipe`` the call is queued there and "queued" returned."""
    if job.status not in RERUNNABLE:
        raise Conflict(
            f"job {job.id} is {job.status.value}; only a job that ended failed, "
            "expired, cancelled or incomplete can be rerun"
        )
    k = svc.store.keys
    lane = lane_of(job.tenant, job.batch_id or None)
    idem = _idem_key(svc, job.tenant, job.id, idempotency_key) if idempotency_key else ""
    keys = [k.job(job.id), k.counts, k.tenant_status(job.tenant, job.status.value)]
    keys += [k.tenant_status(job.tenant, JobStatus.queued.value), k.ready(lane), k.lanes]
    keys += [k.expiring_jobs, idem or k.idem(job.tenant, "-"), k.job_changes(job.id)]
    if job.batch_id:
        b = job.batch_id
        keys += [k.batch(b), k.batch_counts(b), k.expiring_batches, k.batch_changes(b)]
    value = f"{job.id}|{job.attempt + 1}" if idem else ""
    args: list[Any] = [job.id, job.status.value, str(job.attempt), lane, job.batch_id, value]
    args += [svc.settings.idempotency_ttl_s, k.changes_channel]
    args += pairs(fresh(job, time.time()).to_redis())
    script = _script(svc)
    if pipe is not None:
        await script(keys=keys, args=args, client=pipe)
        return "queued"
    code, _ = await script(keys=keys, args=args)
    return _outcome(int(code), job)


def _outcome(code: int, job: Job) -> str:
    if code == 1:
        metrics.JOBS_RERUN.labels(model=metrics.model_label(job.model)).inc()
        return "rerun"
    return "replayed" if code == 2 else "changed"


def _script(svc: Services) -> Any:
    cache = svc.cache
    if "rerun_script" not in cache:
        cache["rerun_script"] = register(svc.redis, "rerun")["rerun"]
    return cache["rerun_script"]


async def rerun_batch(
    svc: Services, batch: Batch, statuses: Iterable[JobStatus], idempotency_key: str | None
) -> dict[str, Any]:
    """Rerun the batch's jobs whose status is one of ``statuses``, in chunks.
    Returns ``{"rerun": n, "statuses": [...]}``, or the first answer again for
    a repeated Idempotency-Key."""
    wanted = sorted({JobStatus(s) for s in statuses} & RERUNNABLE, key=lambda s: s.value)
    if batch.cancel_requested and batch.status == "in_progress":
        raise Conflict(f"batch {batch.id} is being cancelled")
    idem = _idem_key(svc, batch.tenant, batch.id, idempotency_key) if idempotency_key else ""
    if idem:
        # a short-lived marker: after a crash mid-rerun the key is free again soon
        if not await svc.redis.set(idem, "running", nx=True, ex=RUNNING_MARK_S):
            stored = await svc.redis.get(idem)
            if stored in (b"running", "running"):
                raise Conflict("a rerun with this Idempotency-Key is still running")
            return dict(json.loads(stored), replayed=True)
    if batch.cancel_requested:  # it was cancelled and ended: its reruns are not
        await svc.redis.hdel(svc.store.keys.batch(batch.id), "cancel_requested")  # type: ignore[misc]
    count = 0
    start = 0
    while True:
        ids = await batches.job_ids(svc, batch.id, start, CHUNK)
        if not ids:
            break
        start += len(ids)
        matching = await _with_status(svc, ids, {s.value for s in wanted})
        jobs = [j for j in await svc.store.get_jobs(matching) if j is not None]
        count += await _rerun_chunk(svc, [j for j in jobs if j.status in wanted])
    answer = {"batch_id": batch.id, "rerun": count, "statuses": [s.value for s in wanted]}
    if idem:
        await svc.redis.set(idem, json.dumps(answer), ex=svc.settings.idempotency_ttl_s)
    return answer


async def _with_status(svc: Services, ids: list[str], statuses: set[str]) -> list[str]:
    """The ids whose job is in one of ``statuses``: one status field read per
    job, so a 50,000-line batch with 300 failed lines reads 300 whole records."""
    async with svc.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(svc.store.keys.job(job_id), "status")
        found = await pipe.execute()
    names = [v.decode() if isinstance(v, bytes) else v for v in found]
    return [job_id for job_id, st in zip(ids, names, strict=True) if st in statuses]


async def _rerun_chunk(svc: Services, jobs: list[Job]) -> int:
    if not jobs:
        return 0
    async with svc.redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            await rerun_job(svc, job, pipe=pipe)
        results = await pipe.execute()
    done = 0
    for job, (code, _) in zip(jobs, results, strict=True):
        done += _outcome(int(code), job) == "rerun"
    return done
