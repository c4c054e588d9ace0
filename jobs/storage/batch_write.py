"""A batch written in chunks, made visible in one small atomic step.

A 50,000-job batch written as one transaction holds Redis (every other client)
for over a second. So its jobs are written a frame of a few hundred at a time,
one script call each, without MULTI, and the batch is accepted whole or not at
all by a commit protocol:

1. ``stage``: the batch's record, marked ``staging = 1``, and an entry in
   ``{p}:expiring:batches`` due ``STAGE_S`` from now (one MULTI, before any
   job). While the mark is there the API does not show the batch
   (``batches.get_batch``) and the dispatcher does not serve its lane
   (``batch_pause.held``), so none of its jobs can be sent.
2. ``write``: each frame of jobs (records, tenant indexes, counts, the
   batch's lane and job list, as ``create_job`` writes them) in one script
   call (``lua/create_batch_jobs.lua``: a few milliseconds of Redis for 250
   jobs), while the next lines are still being checked. Every ``RENEW_S``
   the staging deadline is renewed first (``lua/renew_stage.lua``), which
   fails once a sweeper has claimed the entry: the writer then stops.
3. ``commit`` (``lua/commit_batch.lua``): if the batch is still staged by this
   writer (mark, deadline unclaimed) and its job list holds every job, the
   mark and the cleanup entry go, the record takes its total and its counts
   the queued jobs. From then on the dispatcher serves its lane.

A batch that does not commit is purged: at once by the writer on an error
(``abandon``: ``lua/abandon_batch.lua`` marks it ``abandoned`` so that no
commit can follow, then its jobs and keys are purged as retention purges a
batch), or, when the writer died (API crash, lost connection), by the
retention sweeper when its entry in ``{p}:expiring:batches`` comes due: the
sweeper's ``purge_batch`` deletes the jobs (and their index entries and
counts), the record, its job list and lane. Either way nothing of it was ever
dispatchable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from jobs.domain.records import Batch
from jobs.domain.statuses import JobStatus
from jobs.errors import Unavailable
from jobs.services import Services
from jobs.storage import purge
from jobs.storage.keys import lane_of
from jobs.storage.scripts import register
from jobs.storage.store import STAGING

STAGE_S = 60.0  # a staged batch not renewed for this long is purged by the sweeper
RENEW_S = 10.0  # a writer renews its staging lease this often (before a frame, or idle)
PURGE_CHUNK = 500


def _scripts(svc: Services) -> dict[str, Any]:
    found = svc.cache.get("batch_write")
    if not isinstance(found, dict):
        found = register(
            svc.redis, "renew_stage", "commit_batch", "abandon_batch", "create_batch_jobs"
        )
        svc.cache["batch_write"] = found
    return found


def _deadline() -> int:
    return int((time.time() + STAGE_S) * 1000)


class StagedBatch:
    """One batch being written: its record staged, then its jobs, then the commit."""

    def __init__(self, svc: Services, batch: Batch) -> None:
        self.svc, self.batch = svc, batch
        self.keys = svc.store.keys
        self.lane = lane_of(batch.tenant, batch.id)
        self.deadline = 0
        self.renewed_at = 0.0  # time.monotonic() of the last renewal
        self.written = 0

    async def stage(self) -> None:
        self.deadline, self.renewed_at = _deadline(), time.monotonic()
        async with self.svc.redis.pipeline(transaction=True) as pipe:
            record = {**self.batch.to_redis(), STAGING: "1"}
            pipe.hset(self.keys.batch(self.batch.id), mapping=record)
            pipe.zadd(self.keys.expiring_batches, {self.batch.id: self.deadline})
            pipe.script_load(_scripts(self.svc)["create_batch_jobs"].script)  # for write()
            await pipe.execute()

    async def renew(self) -> None:
        """Push the staging deadline on; ``Abandoned`` if no longer ours."""
        new = _deadline()
        keys = [self.keys.batch(self.batch.id), self.keys.expiring_batches]
        args = [self.batch.id, self.deadline, new]
        if not await _scripts(self.svc)["renew_stage"](keys=keys, args=args):
            raise Abandoned(self.batch.id)
        self.deadline, self.renewed_at = new, time.monotonic()

    async def write(self, frames: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        """Frames of new jobs, ``(id, record_json)`` in input order: one script
        call each, sent in one pipeline (each call holds Redis a few ms, other
        clients are served between them); the lease renewed first when
        ``RENEW_S`` have passed."""
        if time.monotonic() - self.renewed_at >= RENEW_S:
            await self.renew()
        k, tenant, queued = self.keys, self.batch.tenant, JobStatus.queued.value
        shared = [k.seq, k.counts, k.tenant_jobs(tenant), k.tenant_status(tenant, queued)]
        shared += [k.ready(self.lane), k.lanes, k.batch_jobs(self.batch.id)]
        script = _scripts(self.svc)["create_batch_jobs"]  # loaded by stage()
        for attempt in (1, 2):
            try:
                async with self.svc.redis.pipeline(transaction=False) as pipe:
                    for frame in frames:
                        keys = shared + [k.job(job_id) for job_id, _ in frame]
                        args: list[Any] = [queued, self.lane, len(frame)]
                        args += [job_id for job_id, _ in frame]
                        args += [record for _, record in frame]
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    await pipe.execute()
                break
            except NoScriptError:  # Redis lost its script cache (a restart, a flush)
                if attempt == 2:
                    raise
                # had some call of the group run, the job list's length would
                # no longer match `written` and the commit would refuse the batch
                await self.svc.redis.script_load(script.script)
        self.written += sum(len(f) for f in frames)

    async def commit(self) -> None:
        """Make the batch visible and its lane dispatchable, in one step."""
        k, bid = self.keys, self.batch.id
        keys = [k.batch(bid), k.batch_counts(bid), k.batch_jobs(bid), k.expiring_batches]
        args = [bid, self.written, self.deadline]
        try:
            done = await _scripts(self.svc)["commit_batch"](keys=keys, args=args)
        except Exception:
            if await self.committed():  # the answer was lost, not the commit
                return
            raise
        if not done:
            raise Abandoned(bid)

    async def committed(self) -> bool:
        marked = await self.svc.redis.hmget(self.keys.batch(self.batch.id), ["id", STAGING])  # type: ignore[misc]
        return bool(marked[0]) and not marked[1]

    async def abandon(self) -> None:
        await abandon(self.svc, self.batch.id)


class Abandoned(Unavailable):
    """The batch is no longer staged by this writer (a sweeper took it: the
    writer stalled past ``STAGE_S``); the request is answered 503, to retry."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(
            f"batch {batch_id} was given up while it was being written (Redis or the "
            "API stalled); nothing of it was kept: send it again"
        )


async def abandon(svc: Services, batch_id: str) -> bool:
    """Purge a batch that did not commit: mark it abandoned (no commit can
    follow), then its jobs and its keys. A committed batch is left alone
    (returns False)."""
    keys = svc.store.keys
    not_committed = await _scripts(svc)["abandon_batch"](keys=[keys.batch(batch_id)], args=[])
    if not not_committed:
        return False
    jobs_key = keys.batch_jobs(batch_id)
    while True:
        raw = await svc.redis.lrange(jobs_key, 0, PURGE_CHUNK - 1)  # type: ignore[misc]
        if raw:
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
            await purge.purge_jobs(svc, ids, jobs_key)
            continue
        if await purge.purge_batch_keys(svc, batch_id) >= 0:
            return True
