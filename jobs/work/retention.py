"""Retention: a job is deleted ``INTERQ_RETENTION_S`` after it ends, a batch
with its last job, and either at once on ``DELETE``.

The terminal transition (``lua/finish.lua``) puts the job in ``{p}:expiring:jobs``
(score: when it is due, ms), or, for the last job of a batch, the batch in
``{p}:expiring:batches``; the jobs of a batch live as long as their batch. The
sweeper (``sweep_once``, run by every worker) claims due entries by pushing
their score a lease ahead (several sweepers never take the same entry; a
crashed sweeper's entries come due again after ``LEASE_S``) and purges them.

Purging one job, in this order:

1. its stored result and media files (everything under ``{job_id}/``);
2. one Lua script (``lua/purge_job.lua``, run by ``purge.py``, which names
   its keys from the record): the record, its events list, each event and its
   attempt log, its entries in the tenant indexes, the dead-letter index, the
   Idempotency-Key (if it still names this job), the ``{p}:iid:*`` mappings of
   its interactions, its arq steps, its entries in ``{p}:inflight:{model}``,
   ``{p}:polls``, ``{p}:deliveries`` and ``{p}:expiring:jobs``, and one off
   ``{p}:counts`` for its status.

A crash between 1 and 2 leaves the entry claimed, so it comes due again and
the purge is redone (both steps are idempotent). A batch is purged
``CHUNK`` jobs per round trip, popping them off the batch's job list, then
its own keys (``lua/purge_batch.lua``); an interrupted batch purge resumes
from what is left.

A step still running for a job while it is purged (a poll, a delivery) cannot
bring keys back: the store's plain writes skip a record that is gone. What a
running step writes outside Redis (a result file) is caught by a second sweep
of a deleted job ``recheck_s`` later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.commands.core import AsyncScript

from jobs.domain import batches, cancel
from jobs.domain.records import Batch, Job
from jobs.domain.statuses import TERMINAL
from jobs.observe import metrics
from jobs.services import Services
from jobs.storage import purge
from jobs.storage.scripts import register

log = logging.getLogger("interq.retention")

CHUNK = 500  # jobs purged per round trip: one keeps Redis busy for milliseconds
FILE_CONCURRENCY = 32  # result-folder deletions at once
LEASE_S = 300.0  # a claimed entry not purged by then is due again
MAX_IDLE_S = 5.0  # the longest the sweeper sleeps between looks


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --------------------------------------------------------------------------- purge


async def delete_files(svc: Services, job_ids: list[str]) -> None:
    """Every stored file of these jobs (result JSON and media), a few at once."""
    gate = asyncio.Semaphore(FILE_CONCURRENCY)

    async def one(job_id: str) -> None:
        async with gate:
            await svc.results.delete_prefix(f"{job_id}/")

    await asyncio.gather(*(one(j) for j in job_ids))


async def purge_jobs(svc: Services, job_ids: list[str], batch_list: str = "") -> int:
    """Delete jobs and everything of theirs: files first, then the Redis keys
    (``purge.purge_jobs``, at most ``CHUNK`` ids). ``batch_list``: the batch's
    job list, whose head these ids are (popped as they go). Returns how many
    existed."""
    if not job_ids:
        return 0
    await delete_files(svc, job_ids)
    n = await purge.purge_jobs(svc, job_ids, batch_list)
    if n:
        metrics.PURGED.labels(kind="job").inc(n)
    return n


async def purge_job(svc: Services, job_id: str) -> bool:
    return await purge_jobs(svc, [job_id]) == 1


async def purge_batch(svc: Services, batch_id: str) -> bool:
    """Delete a batch: its jobs ``CHUNK`` at a time, then its own keys (record,
    counts, job list, events, dispatch lane). Returns whether it existed."""
    jobs_key = svc.store.keys.batch_jobs(batch_id)
    while True:
        ids = await batches.job_ids(svc, batch_id, 0, CHUNK)
        if ids:
            await purge_jobs(svc, ids, batch_list=jobs_key)
            continue
        done = await purge.purge_batch_keys(svc, batch_id)
        if done >= 0:
            if done:
                metrics.PURGED.labels(kind="batch").inc()
            return bool(done)


# --------------------------------------------------------------------------- sweeper


async def claim(svc: Services, key: str, now_ms: int, limit: int) -> list[str]:
    """Up to ``limit`` members of ``key`` due by ``now_ms``, each leased for
    ``LEASE_S`` (``lua/claim_due.lua``, as the engines claim)."""
    script = svc.cache.get("claim_due")
    if not isinstance(script, AsyncScript):
        script = svc.cache["claim_due"] = register(svc.redis, "claim_due")["claim_due"]
    raw = await script(keys=[key], args=[now_ms, int(LEASE_S * 1000), limit])
    return [_s(raw[i]) for i in range(0, len(raw), 2)]


async def sweep_once(svc: Services, now: float | None = None) -> float:
    """Purge what is due by ``now`` (default: the clock): up to ``CHUNK`` jobs
    and one batch. Returns the seconds to wait before the next call (0 when
    more is due), at most ``MAX_IDLE_S``."""
    t = time.time() if now is None else now
    now_ms = int(t * 1000)
    keys = svc.store.keys
    ids = await claim(svc, keys.expiring_jobs, now_ms, CHUNK)
    if ids:
        await purge_jobs(svc, ids)
    due_batches = await claim(svc, keys.expiring_batches, now_ms, 1)
    for batch_id in due_batches:
        await purge_batch(svc, batch_id)
    if len(ids) == CHUNK or due_batches:
        return 0.0
    wait = MAX_IDLE_S
    async with svc.redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.expiring_jobs, 0, 0, withscores=True)
        pipe.zrange(keys.expiring_batches, 0, 0, withscores=True)
        for first in await pipe.execute():
            if first:
                wait = min(wait, max(0.0, float(first[0][1]) / 1000 - t))
    return wait


# --------------------------------------------------------------------------- DELETE


async def stop(svc: Services, job: Job) -> None:
    """End an active job as ``cancelled`` before it is purged: a queued one is
    never sent, a running or paused one is cancelled upstream now."""
    await cancel.request(svc, job, "deleted before it was sent upstream", at_once=True)


def recheck_s(svc: Services) -> float:
    """When a deleted job or batch is swept once more: after any step that
    was running for it has ended (steps time out well within two step timeouts)."""
    return 2 * svc.settings.step_timeout_s


async def delete_job(svc: Services, job: Job) -> None:
    """``DELETE /v1/jobs/{id}``: stop it if active, then purge it now."""
    if job.status not in TERMINAL:
        await stop(svc, job)
    await purge_job(svc, job.id)
    due_ms = int((time.time() + recheck_s(svc)) * 1000)
    await svc.redis.zadd(svc.store.keys.expiring_jobs, {job.id: due_ms})


async def delete_batch(svc: Services, batch: Batch) -> None:
    """``DELETE /v1/batches/{id}``: stop its active jobs, then purge it all."""
    bid = batch.id
    start = 0
    while ids := await batches.job_ids(svc, bid, start, CHUNK):
        jobs = [j for j in await svc.store.get_jobs(ids) if j is not None]
        active = [j for j in jobs if j.status not in TERMINAL]
        await asyncio.gather(*(stop(svc, j) for j in active))
        start += len(ids)
    await purge_batch(svc, bid)
    due_ms = int((time.time() + recheck_s(svc)) * 1000)
    await svc.redis.zadd(svc.store.keys.expiring_batches, {bid: due_ms})
