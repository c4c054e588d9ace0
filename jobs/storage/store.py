"""Job, batch and event records in Redis: reads, plain writes, creation.

The records cross this boundary typed (``records.Job``, ``Event``, ``Batch``);
a hash without the fields every record has (a job's status, an event's
state, a batch's id) reads as no record.
State changes are the transitions of ``transitions.py``, which ``Store``
inherits; a job is created with its indexes, lane and Idempotency-Key in one
script (``lua/create_job.lua``), sent with the other creates in flight in one
pipeline (``coalesce.py``). A plain write (``set_fields``,
``update_event``, ``log_attempt``) only writes a record that still exists,
so a step still running when its job was purged cannot bring a piece back.
Key names are in ``jobs/keys.py``, the scripts in ``jobs/lua/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs.domain.records import (
    Batch,
    Event,
    EventUpdate,
    Fields,
    Job,
    JobUpdate,
    event_fields,
    job_fields,
)
from jobs.storage.coalesce import Coalescer
from jobs.storage.keys import Keys
from jobs.storage.scripts import pairs, register
from jobs.storage.transitions import Outcome, Step, Transitions

__all__ = ["Outcome", "Page", "Step", "Store"]

ATTEMPTS_KEPT = 100  # delivery attempts kept in an event's log
STAGING = "staging"  # a batch record's field while it is being written (batch_write.py)


@dataclass
class Page:
    items: list[Job] = field(default_factory=list)
    next_cursor: str | None = None


def record_json(job: Job) -> bytes:
    """A new job's record as one UTF-8 JSON object, field -> value, for the
    create scripts' ``cjson`` (``lua/create_job.lua``, ``create_batch_jobs.lua``)."""
    return orjson.dumps(job.to_redis())


class Store(Transitions):
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "interq",
        queue: str = "interq:queue",
        retention_s: float = 7 * 86_400.0,
    ):
        super().__init__(redis, Keys(prefix, queue), retention_s)
        more = register(redis, "create_job", "update_record", "dead_letter", "log_attempt")
        self._lua.update(more)
        self._creates = Coalescer(redis, self._lua["create_job"])

    # -- jobs -----------------------------------------------------------------
    async def create_job(
        self,
        job: Job,
        *,
        lane: str,
        idem: tuple[str, str] | None = None,
        idem_ttl_s: int = 86_400,
        pipe: Any = None,
    ) -> tuple[bool, str]:
        """Write a new job with its index entries and its place in its dispatch
        ``lane``. With ``idem=(key digest, value)``, returns ``(False, the
        value stored)`` if that Idempotency-Key was already used. With ``pipe``
        the call is queued on that pipeline, which the caller executes."""
        k = self.keys
        keys = [k.job(job.id), k.seq, k.counts, k.tenant_jobs(job.tenant)]
        keys += [k.tenant_status(job.tenant, job.status), k.ready(lane), k.lanes]
        if idem:
            job.idem_key = k.idem(job.tenant, idem[0])
            keys.append(job.idem_key)
        if job.batch_id:
            keys.append(k.batch_jobs(job.batch_id))
        args: list[Any] = [job.id, job.status.value, lane, idem[1] if idem else ""]
        args += [idem_ttl_s, "1" if job.batch_id else "", record_json(job)]
        if pipe is not None:
            await self._lua["create_job"](keys=keys, args=args, client=pipe)
            return True, ""
        res = await self._creates.call(keys, args)  # with the creates in flight beside it
        return bool(res[0]), _s(res[1])

    async def get_job(self, job_id: str) -> Job | None:
        raw = await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[misc]
        return Job.from_redis(raw) if _has(raw, "status") else None

    async def get_jobs(self, job_ids: list[str]) -> list[Job | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for jid in job_ids:
                pipe.hgetall(self.keys.job(jid))
            raws = await pipe.execute()
        return [Job.from_redis(r) if _has(r, "status") else None for r in raws]

    async def get_batch(self, batch_id: str) -> Batch | None:
        raw = await self.redis.hgetall(self.keys.batch(batch_id))  # type: ignore[misc]
        return Batch.from_redis(raw) if _has(raw, "id") else None

    async def get_owner(self, ref: str) -> Job | Batch | None:
        """The job or batch an event belongs to ("job:<id>" / "batch:<id>")."""
        kind, _, owner_id = ref.partition(":")
        return await (self.get_batch(owner_id) if kind == "batch" else self.get_job(owner_id))

    async def get_hash(self, key: str) -> Fields | None:
        """A plain hash (a tenant's endpoint) by its key."""
        raw = await self.redis.hgetall(key)  # type: ignore[misc]
        return {_s(k): _s(v) for k, v in raw.items()} if raw else None

    async def set_fields(
        self, job_id: str, fields: JobUpdate, incr: dict[str, int] | None = None
    ) -> None:
        """Plain write of informational fields (no state change); a job that is
        gone (purged) is not written back."""
        changes = {**job_fields(fields), "updated_at": f"{time.time():.3f}"}
        added = pairs(incr or {})
        args = [len(added) // 2, *added, *pairs(changes)]
        await self._lua["update_record"](keys=[self.keys.job(job_id)], args=args)

    async def remember_interaction(self, interaction_id: str, job_id: str, ttl_s: int) -> None:
        await self.redis.set(self.keys.iid(interaction_id), job_id, ex=ttl_s)

    async def job_for_interaction(self, interaction_id: str) -> str | None:
        raw = await self.redis.get(self.keys.iid(interaction_id))
        return _s(raw) if raw is not None else None

    async def interaction_tenants(self, interaction_ids: list[Any]) -> list[str | None]:
        """For each interaction id as a caller sent it, the tenant of the job it
        belongs to (None: no such job, or not a string), in two round trips
        whatever the count (a batch's chains)."""
        names = [i if isinstance(i, str) else "" for i in interaction_ids]  # "": never set
        raw = await self.redis.mget([self.keys.iid(i) for i in names])
        job_ids = [_s(r) if r is not None else None for r in raw]
        async with self.redis.pipeline(transaction=False) as pipe:
            for jid in job_ids:
                if jid is not None:
                    pipe.hmget(self.keys.job(jid), ["tenant", "status"])
            found = iter(await pipe.execute())
        out: list[str | None] = []
        for jid in job_ids:
            tenant, status = next(found) if jid is not None else (None, None)
            out.append(_s(tenant) if tenant is not None and status is not None else None)
        return out

    async def poke(self, job_id: str) -> bool:
        """Bring a job's next poll forward to now (after a cancel, or when the
        upstream's webhook says the interaction ended). Only a job that is in
        the poll index moves."""
        score = int(time.time() * 1000)
        changed = await self.redis.zadd(self.keys.polls, {job_id: score}, xx=True, lt=True, ch=True)
        return bool(changed)

    async def poke_or_add(self, job_id: str) -> None:
        """Put a job in the poll index due now, whether or not it is there."""
        await self.redis.zadd(self.keys.polls, {job_id: int(time.time() * 1000)})

    async def deliver_now(self, event_id: str) -> None:
        """Put an event in the delivery index, due now."""
        await self.redis.zadd(self.keys.deliveries, {event_id: int(time.time() * 1000)})

    async def list_jobs(
        self, tenant: str, *, status: str | None, limit: int, cursor: int | None
    ) -> Page:
        key = self.keys.tenant_status(tenant, status) if status else self.keys.tenant_jobs(tenant)
        top = f"({cursor}" if cursor is not None else "+inf"
        raw = await self.redis.zrevrangebyscore(
            key, top, "-inf", start=0, num=limit + 1, withscores=True
        )
        ids = [(_s(m), int(sc)) for m, sc in raw]
        more = len(ids) > limit
        ids = ids[:limit]
        jobs = await self.visible(await self.get_jobs([i for i, _ in ids]))
        page = Page(items=jobs)
        if more and ids:
            page.next_cursor = str(ids[-1][1])
        return page

    async def visible(self, jobs: list[Job | None]) -> list[Job]:
        """The jobs that exist and are not of a batch still being written (its
        record marked ``staging``: ``batch_write.py``), which may yet be refused."""
        found = [j for j in jobs if j is not None]
        batch_ids = sorted({j.batch_id for j in found if j.batch_id})
        if not batch_ids:
            return found
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in batch_ids:
                pipe.hexists(self.keys.batch(bid), STAGING)
            staged = {bid for bid, s in zip(batch_ids, await pipe.execute(), strict=True) if s}
        return [j for j in found if j.batch_id not in staged]

    # -- events ---------------------------------------------------------------
    async def get_event(self, event_id: str) -> Event | None:
        raw = await self.redis.hgetall(self.keys.event(event_id))  # type: ignore[misc]
        return Event.from_redis(raw) if _has(raw, "state") else None

    async def get_events(self, event_ids: list[str]) -> list[Event | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for eid in event_ids:
                pipe.hgetall(self.keys.event(eid))
            raws = await pipe.execute()
        return [Event.from_redis(r) if _has(r, "state") else None for r in raws]

    async def job_event_ids(self, job_id: str) -> list[str]:
        raw = await self.redis.lrange(self.keys.job_events(job_id), 0, -1)  # type: ignore[misc]
        return [_s(x) for x in raw]

    async def update_event(
        self, event_id: str, fields: EventUpdate, *, dead_for: str | None = None
    ) -> None:
        """Update an event; with ``dead_for=<tenant>`` also dead-letter it. A
        purged event is not written back."""
        key, changes = self.keys.event(event_id), pairs(event_fields(fields))
        if dead_for is None:
            await self._lua["update_record"](keys=[key], args=[0, *changes])
            return
        keys = [key, self.keys.deadletter(dead_for)]
        await self._lua["dead_letter"](keys=keys, args=[event_id, str(time.time()), *changes])

    async def dead_letters(self, tenant: str, limit: int) -> list[Event]:
        ids = await self.redis.zrevrange(self.keys.deadletter(tenant), 0, limit - 1)
        return [e for e in await self.get_events([_s(i) for i in ids]) if e is not None]

    async def undead(self, tenant: str, event_id: str) -> None:
        await self.redis.zrem(self.keys.deadletter(tenant), event_id)

    async def log_attempt(self, event_id: str, attempt: dict[str, Any]) -> None:
        """Append to the event's attempt log (the last ``ATTEMPTS_KEPT``)."""
        keys = [self.keys.event(event_id), self.keys.event_attempts(event_id)]
        await self._lua["log_attempt"](keys=keys, args=[json.dumps(attempt), ATTEMPTS_KEPT])

    async def event_attempts(self, event_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys.event_attempts(event_id), 0, -1)  # type: ignore[misc]
        return [json.loads(x) for x in raw]


def _has(raw: dict[Any, Any], name: str) -> bool:
    """Whether a hash as read is a whole record: a stray field written by a step
    racing a purge (``steps.submit_faults``, a cancel flag) is not one."""
    return name.encode() in raw or name in raw


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
