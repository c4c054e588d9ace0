"""Retention: a job is deleted ``INTERQ_RETENTION_S`` after it ends, a batch
with its last job, and either at once on ``DELETE``.

The terminal transition (``store.py``) puts the job in ``{p}:expiring:jobs``
(score: when it is due, ms), or, for the last job of a batch, the batch in
``{p}:expiring:batches``; the jobs of a batch live as long as their batch. The
sweeper (``sweep_once``, run by every worker) claims due entries by pushing
their score a lease ahead (several sweepers never take the same entry; a
crashed sweeper's entries come due again after ``LEASE_S``) and purges them.

Purging one job, in this order:

1. its stored result and media files (everything under ``{job_id}/``);
2. one Lua script: the record, its events list, each event and its attempt
   log, its entries in the tenant indexes, the dead-letter index, the
   Idempotency-Key (if it still names this job), the ``{p}:iid:*`` mappings of
   its interactions, its arq steps, its entries in ``{p}:inflight:{model}``,
   ``{p}:polls``, ``{p}:deliveries`` and ``{p}:expiring:jobs``, and one off
   ``{p}:counts`` for its status.

A crash between 1 and 2 leaves the entry claimed, so it comes due again and
the purge is redone (both steps are idempotent). A batch is purged
``CHUNK`` jobs per script call, popping them off ``batch:{id}:jobs``, then its
own keys; an interrupted batch purge resumes from what is left.

A step still running for a job while it is purged (a poll, a delivery) cannot
bring keys back: the store's plain writes skip a record that is gone. What a
running step writes outside Redis (a result file) is caught by a second sweep
of a deleted job ``recheck_s`` later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from arq.constants import job_key_prefix, retry_key_prefix
from redis.commands.core import AsyncScript

from . import batches, metrics
from .models import TERMINAL, JobStatus
from .outcomes import finish
from .records import Batch, Job
from .services import Services
from .upstream import UpstreamError

log = logging.getLogger("interq.retention")

CHUNK = 500  # jobs per purge script call: one call keeps Redis busy for milliseconds
FILE_CONCURRENCY = 32  # result-folder deletions at once
LEASE_S = 300.0  # a claimed entry not purged by then is due again
MAX_IDLE_S = 5.0  # the longest the sweeper sleeps between looks

_COMMON = """
local spec = cjson.decode(ARGV[1])
local p = spec.prefix
local function drop_arq(id)
  redis.call('DEL', spec.arq_job .. id, spec.arq_retry .. id)
  redis.call('ZREM', spec.queue, id)
end
local function drop_event(eid)
  local ek = p .. ':event:' .. eid
  local ev = redis.call('HMGET', ek, 'tenant', 'redeliveries')
  if ev[1] then redis.call('ZREM', p .. ':t:' .. ev[1] .. ':deadletter', eid) end
  drop_arq('deliver:' .. eid)
  for n = 1, tonumber(ev[2] or '0') or 0 do drop_arq('deliver:' .. eid .. ':r' .. n) end
  redis.call('ZREM', p .. ':deliveries', eid)
  redis.call('DEL', ek, ek .. ':attempts')
end
local function drop_events(owner_key)
  for _, eid in ipairs(redis.call('LRANGE', owner_key .. ':events', 0, -1)) do
    drop_event(eid)
  end
  redis.call('DEL', owner_key .. ':events')
end
local function drop_iids(id, raw)
  if not raw or raw == '' then return end
  for n, iid in ipairs(cjson.decode(raw)) do
    local k = p .. ':iid:' .. iid
    if redis.call('GET', k) == id then redis.call('DEL', k) end
    drop_arq('poll:' .. id .. ':' .. iid)
    drop_arq('poll:' .. id .. ':' .. iid .. ':deadline')
    drop_arq('submit:' .. id .. ':' .. n)
  end
end
local function drop_job(id)
  local jk = p .. ':job:' .. id
  local j = redis.call('HMGET', jk, 'status', 'tenant', 'model', 'idem_key', 'interaction_ids')
  local status, tenant, model = j[1], j[2], j[3] or ''
  if status then
    redis.call('ZREM', p .. ':t:' .. tenant .. ':jobs', id)
    redis.call('ZREM', p .. ':t:' .. tenant .. ':s:' .. status, id)
    redis.call('HINCRBY', p .. ':counts', status, -1)
    local ik = p .. ':inflight:' .. model
    if redis.call('ZREM', ik, id) == 1 and redis.call('EXISTS', ik) == 0 then
      redis.call('SREM', p .. ':models', model)
    end
    if j[4] and j[4] ~= '' then
      local v = redis.call('GET', j[4])
      if v and string.sub(v, 1, #id + 1) == id .. '|' then redis.call('DEL', j[4]) end
    end
    drop_iids(id, j[5])
  end
  drop_arq('submit:' .. id)
  drop_events(jk)
  redis.call('DEL', jk)
  redis.call('ZREM', p .. ':polls', id)
  redis.call('ZREM', p .. ':expiring:jobs', id)
  return status and 1 or 0
end
"""

_PURGE_JOBS = (
    _COMMON
    + """
local n = 0
for _, id in ipairs(spec.ids) do
  if spec.list ~= '' and redis.call('LINDEX', spec.list, 0) == id then
    redis.call('LPOP', spec.list)
  end
  n = n + drop_job(id)
end
return n
"""
)

_PURGE_BATCH = (
    _COMMON
    + """
local bk = p .. ':batch:' .. spec.batch
if redis.call('LLEN', bk .. ':jobs') > 0 then return -1 end
local tenant = redis.call('HGET', bk, 'tenant')
if tenant then
  local lane = tenant .. '|' .. spec.batch
  redis.call('UNLINK', p .. ':ready:' .. lane)
  redis.call('SREM', p .. ':lanes', lane)
end
drop_events(bk)
drop_arq('batch_done:' .. spec.batch)
redis.call('DEL', bk, bk .. ':counts')
redis.call('ZREM', p .. ':expiring:batches', spec.batch)
return tenant and 1 or 0
"""
)

# Take up to ARGV[3] members due by ARGV[1] (ms), each leased until ARGV[1] + ARGV[2].
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], until_ms, m) end
return due
"""


@dataclass
class _Scripts:
    purge_jobs: AsyncScript
    purge_batch: AsyncScript
    claim: AsyncScript


def _scripts(svc: Services) -> _Scripts:
    found = svc.cache.get("retention")
    if not isinstance(found, _Scripts):
        r = svc.redis
        found = _Scripts(
            r.register_script(_PURGE_JOBS),
            r.register_script(_PURGE_BATCH),
            r.register_script(_CLAIM),
        )
        svc.cache["retention"] = found
    return found


def _spec(svc: Services, **extra: Any) -> str:
    return json.dumps(
        {
            "prefix": svc.store.prefix,
            "queue": svc.store.queue,
            "arq_job": job_key_prefix,
            "arq_retry": retry_key_prefix,
            **extra,
        }
    )


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
    in one script (at most ``CHUNK`` ids). ``batch_list``: the batch's job list,
    whose head these ids are (popped as they go). Returns how many existed."""
    if not job_ids:
        return 0
    await delete_files(svc, job_ids)
    spec = _spec(svc, ids=job_ids, list=batch_list)
    n = int(await _scripts(svc).purge_jobs(args=[spec]))
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
        done = int(await _scripts(svc).purge_batch(args=[_spec(svc, batch=batch_id)]))
        if done >= 0:
            if done:
                metrics.PURGED.labels(kind="batch").inc()
            return bool(done)


# --------------------------------------------------------------------------- sweeper


async def claim(svc: Services, key: str, now_ms: int, limit: int) -> list[str]:
    lease_ms = int(LEASE_S * 1000)
    raw = await _scripts(svc).claim(keys=[key], args=[now_ms, lease_ms, limit])
    return [_s(x) for x in raw]


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
    """End an active job as ``cancelled`` (best effort, it is about to be
    purged): a queued one is never sent, a running or paused one is cancelled
    upstream first."""
    from .steps import cancel_paused

    status = job.status
    if status == JobStatus.queued:
        note = "deleted before it was sent upstream"
        if await finish(svc, job, JobStatus.cancelled, expect={status}, note=note):
            return
        fresh = await svc.store.get_job(job.id)
        if fresh is None:
            return
        job, status = fresh, fresh.status
    if status == JobStatus.requires_action:
        await cancel_paused(svc, job)
    elif status == JobStatus.running:
        try:
            if job.interaction_id:
                await svc.upstream.cancel(job.interaction_id)
        except UpstreamError as e:
            log.info("job %s: upstream cancel before delete: %s", job.id, e.message)
        note = "deleted while running; cancelled upstream"
        await finish(svc, job, JobStatus.cancelled, expect={status}, note=note)


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
