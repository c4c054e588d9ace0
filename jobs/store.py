"""Job records, indexes, webhook events and atomic transitions in Redis.

Every state change is one Lua script: it checks the expected state
(compare-and-set), writes the record, moves the job between the status
indexes, creates a webhook event if asked (the outbox) and enqueues the arq
step that carries the work on, all in one atomic step. A stale step therefore
finds the state moved on and does nothing, and no transition can be written
without the step that follows it.

Key names are in ``jobs/keys.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from .keys import Keys
from .models import TERMINAL, JobStatus
from .records import (
    Batch,
    BatchUpdate,
    Event,
    EventUpdate,
    Fields,
    Job,
    JobUpdate,
    batch_fields,
    event_fields,
    job_fields,
)

# Enqueue spec.enqueue[i] as an arq job whose serialized payload is ARGV[1 + i]
# (skipped if that arq job id already exists), exactly as arq's enqueue_job does.
_LUA_ENQUEUE = """for i, q in ipairs(spec.enqueue) do
  local ak = spec.arq_prefix .. q.id
  if redis.call('EXISTS', ak) == 0 then
    redis.call('SET', ak, ARGV[1 + i], 'PX', q.px)
    redis.call('ZADD', q.queue, q.score, q.id)
  end
end"""

_TRANSITION = """
local spec = cjson.decode(ARGV[1])
local jk = KEYS[1]
local cur = redis.call('HGET', jk, 'status')
if not cur then return {0, ''} end
if spec.expect then
  local ok = false
  for _, s in ipairs(spec.expect) do if s == cur then ok = true end end
  if not ok then return {0, cur} end
end
if spec.cond then
  for f, v in pairs(spec.cond) do
    if (redis.call('HGET', jk, f) or '') ~= v then return {0, cur} end
  end
end
if spec.set then
  for f, v in pairs(spec.set) do redis.call('HSET', jk, f, v) end
end
if spec.incr then
  for f, n in pairs(spec.incr) do redis.call('HINCRBY', jk, f, n) end
end
if spec.status and spec.status ~= cur and not spec.plain then
  local tenant = redis.call('HGET', jk, 'tenant')
  local seq = redis.call('HGET', jk, 'seq')
  local p = spec.prefix
  redis.call('ZREM', p .. ':t:' .. tenant .. ':s:' .. cur, spec.id)
  redis.call('HINCRBY', p .. ':counts', cur, -1)
  redis.call('HINCRBY', p .. ':counts', spec.status, 1)
  redis.call('ZADD', p .. ':t:' .. tenant .. ':s:' .. spec.status, seq, spec.id)
  redis.call('HSET', jk, 'status', spec.status)
  if spec.release then
    local model = redis.call('HGET', jk, 'model') or ''
    local ik = p .. ':inflight:' .. model
    redis.call('ZREM', ik, spec.id)
    if redis.call('EXISTS', ik) == 0 then redis.call('SREM', p .. ':models', model) end
  elseif spec.status == 'running' and cur == 'requires_action' then
    -- resumed by /continue: counts in flight again until it ends or pauses
    local model = redis.call('HGET', jk, 'model') or ''
    redis.call('ZADD', p .. ':inflight:' .. model, spec.now_ms, spec.id)
    redis.call('SADD', p .. ':models', model)
  end
  local batch = redis.call('HGET', jk, 'batch_id')
  if batch and batch ~= '' then
    local bk = p .. ':batch:' .. batch
    redis.call('HINCRBY', bk .. ':counts', cur, -1)
    redis.call('HINCRBY', bk .. ':counts', spec.status, 1)
    if spec.terminal and spec.batch_step then
      local done = redis.call('HINCRBY', bk, 'done', 1)
      if tostring(done) == redis.call('HGET', bk, 'total') then
        local q = spec.batch_step
        redis.call('SET', spec.arq_prefix .. q.id, ARGV[#spec.enqueue + 2], 'PX', q.px)
        redis.call('ZADD', q.queue, q.score, q.id)
        redis.call('ZADD', p .. ':expiring:batches', spec.expire_at, batch)
      end
    end
  elseif spec.terminal then
    redis.call('ZADD', p .. ':expiring:jobs', spec.expire_at, spec.id)
  end
end
if spec.status and spec.plain then redis.call('HSET', jk, 'status', spec.status) end
if spec.event then
  local ek = spec.prefix .. ':event:' .. spec.event.id
  for f, v in pairs(spec.event.fields) do redis.call('HSET', ek, f, v) end
  redis.call('RPUSH', jk .. ':events', spec.event.id)
  if spec.event.fields.state == 'pending' then
    redis.call('ZADD', spec.prefix .. ':deliveries', spec.now_ms, spec.event.id)
  end
end
if spec.poll_at then
  redis.call('ZADD', spec.prefix .. ':polls', spec.poll_at, spec.id)
elseif spec.unpoll then
  redis.call('ZREM', spec.prefix .. ':polls', spec.id)
end
__ENQUEUE__
return {1, cur}
""".replace("__ENQUEUE__", _LUA_ENQUEUE)

_CREATE = """
local spec = cjson.decode(ARGV[1])
local jk = KEYS[1]
local p = spec.prefix
if spec.idem_key ~= '' then
  local ex = redis.call('GET', spec.idem_key)
  if ex then return {0, ex} end
  redis.call('SET', spec.idem_key, spec.idem_value, 'EX', spec.idem_ttl)
end
local seq = redis.call('INCR', p .. ':seq')
redis.call('HSET', jk, 'seq', seq)
for f, v in pairs(spec.fields) do redis.call('HSET', jk, f, v) end
redis.call('ZADD', p .. ':t:' .. spec.tenant .. ':jobs', seq, spec.id)
redis.call('ZADD', p .. ':t:' .. spec.tenant .. ':s:' .. spec.fields.status, seq, spec.id)
redis.call('HINCRBY', p .. ':counts', spec.fields.status, 1)
if spec.lane ~= '' then
  redis.call('RPUSH', p .. ':ready:' .. spec.lane, spec.id)
  redis.call('SADD', p .. ':lanes', spec.lane)
end
if spec.fields.batch_id and spec.fields.batch_id ~= '' then
  redis.call('RPUSH', p .. ':batch:' .. spec.fields.batch_id .. ':jobs', spec.id)
end
__ENQUEUE__
return {1, tostring(seq)}
""".replace("__ENQUEUE__", _LUA_ENQUEUE)


_ENQUEUE = """
local spec = cjson.decode(ARGV[1])
__ENQUEUE__
return 1
""".replace("__ENQUEUE__", _LUA_ENQUEUE)

# Write to a record only while it exists: a step still running when its job was
# purged must not bring back a stray piece of it.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local spec = cjson.decode(ARGV[1])
for f, v in pairs(spec.set or {}) do redis.call('HSET', KEYS[1], f, v) end
for f, n in pairs(spec.incr or {}) do redis.call('HINCRBY', KEYS[1], f, n) end
if spec.zadd then redis.call('ZADD', spec.zadd[1], spec.zadd[2], spec.zadd[3]) end
if spec.push then
  redis.call('RPUSH', spec.push[1], spec.push[2])
  redis.call('LTRIM', spec.push[1], spec.push[3], -1)
end
return 1
"""


@dataclass(frozen=True)
class Step:
    """An arq job to enqueue inside a transition (function name, args, id, delay)."""

    function: str
    args: tuple[str, ...]
    job_id: str
    defer_s: float = 0.0
    expires_s: float = 86_400.0


@dataclass
class Outcome:
    ok: bool
    previous: str  # status before the script ran ('' if the job does not exist)


@dataclass
class Page:
    items: list[Job] = field(default_factory=list)
    next_cursor: str | None = None


def now() -> float:
    return time.time()


class Store:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "interq",
        queue: str = "interq:queue",
        retention_s: float = 7 * 86_400.0,
    ):
        self.redis = redis
        self.keys = Keys(prefix, queue)
        self.prefix = prefix
        self.queue = queue
        self.retention_s = retention_s  # a job ended this long ago is purged
        self._transition = redis.register_script(_TRANSITION)
        self._create = redis.register_script(_CREATE)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._update = redis.register_script(_UPDATE)

    # -- arq payloads ---------------------------------------------------------
    def enqueue_spec(self, steps: list[Step]) -> tuple[list[dict[str, Any]], list[bytes]]:
        now_ms = int(time.time() * 1000)
        specs, payloads = [], []
        for s in steps:
            score = now_ms + int(s.defer_s * 1000)
            specs.append(
                {
                    "id": s.job_id,
                    "queue": self.queue,
                    "score": str(score),
                    "px": str(int((s.defer_s + s.expires_s) * 1000)),
                }
            )
            payloads.append(serialize_job(s.function, s.args, {}, None, now_ms))
        return specs, payloads

    # -- jobs -----------------------------------------------------------------
    async def create_job(
        self,
        job: Job,
        steps: list[Step],
        idem: tuple[str, str] | None = None,
        idem_ttl_s: int = 86_400,
        lane: str = "",
        pipe: Any = None,
    ) -> tuple[bool, str]:
        """Create a job and enqueue its first step. With ``idem=(key, value)``,
        returns ``(False, existing_value)`` if that key was already used."""
        enqueue, payloads = self.enqueue_spec(steps)
        job_id, tenant = job.id, job.tenant
        if idem:
            job.idem_key = self.keys.idem(tenant, idem[0])
        spec = {
            "prefix": self.prefix,
            "arq_prefix": job_key_prefix,
            "id": job_id,
            "tenant": tenant,
            "fields": job.to_redis(),
            "idem_key": job.idem_key,
            "idem_value": idem[1] if idem else "",
            "idem_ttl": str(idem_ttl_s),
            "enqueue": enqueue,
            "lane": lane,
        }
        args: list[str | bytes] = [json.dumps(spec), *payloads]
        if pipe is not None:  # queued on a pipeline: the caller executes it
            await self._create(keys=[self.keys.job(job_id)], args=args, client=pipe)
            return True, ""
        res = await self._create(keys=[self.keys.job(job_id)], args=args)
        return bool(res[0]), _s(res[1])

    async def get_job(self, job_id: str) -> Job | None:
        raw = await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[misc]
        return Job.from_redis(raw) if raw else None

    async def get_jobs(self, job_ids: list[str]) -> list[Job | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for jid in job_ids:
                pipe.hgetall(self.keys.job(jid))
            raws = await pipe.execute()
        return [Job.from_redis(r) if r else None for r in raws]

    async def get_batch(self, batch_id: str) -> Batch | None:
        raw = await self.redis.hgetall(self.keys.batch(batch_id))  # type: ignore[misc]
        return Batch.from_redis(raw) if raw else None

    async def get_owner(self, ref: str) -> Job | Batch | None:
        """The job or batch an event belongs to ("job:<id>" / "batch:<id>")."""
        kind, _, owner_id = ref.partition(":")
        return await (self.get_batch(owner_id) if kind == "batch" else self.get_job(owner_id))

    async def get_hash(self, key: str) -> Fields | None:
        """A plain hash (a tenant's endpoint) by its key."""
        raw = await self.redis.hgetall(key)  # type: ignore[misc]
        return {_s(k): _s(v) for k, v in raw.items()} if raw else None

    async def transition(
        self,
        job_id: str,
        *,
        expect: set[JobStatus] | None = None,
        cond: Fields | None = None,
        status: JobStatus | None = None,
        set_fields: JobUpdate | None = None,
        incr: dict[str, int] | None = None,
        event: Event | None = None,
        steps: list[Step] | None = None,
        batch_step: Step | None = None,
        key: str | None = None,
        poll_at: float | None = None,
        unpoll: bool = False,
        encoded: Fields | None = None,
    ) -> Outcome:
        """Compare-and-set: applies everything only if the job's status is in
        ``expect`` and every ``cond`` field equals its value. ``poll_at`` (epoch
        seconds) puts the job in the poll index, ``unpoll`` takes it out; an
        event in state ``pending`` goes into the delivery index at once."""
        enqueue, payloads = self.enqueue_spec(steps or [])
        spec: dict[str, Any] = {
            "prefix": self.prefix,
            "arq_prefix": job_key_prefix,
            "id": job_id,
            "enqueue": enqueue,
            "now_ms": int(now() * 1000),
        }
        if poll_at is not None:
            spec["poll_at"] = int(poll_at * 1000)
        elif unpoll:
            spec["unpoll"] = True
        if expect is not None:
            spec["expect"] = sorted(s.value for s in expect)
        if cond:
            spec["cond"] = cond
        fields = dict(encoded) if encoded is not None else job_fields(set_fields or {})
        at = now()
        fields["updated_at"] = f"{at:.3f}"
        spec["set"] = fields
        if incr:
            spec["incr"] = incr
        if status is not None:
            spec["status"] = status.value
            spec["release"] = status not in (JobStatus.queued, JobStatus.running)
            spec["terminal"] = status in TERMINAL
            spec["expire_at"] = str(int((at + self.retention_s) * 1000))
        if key is not None:
            spec["plain"] = True  # not a job: no status indexes, budgets or batch counts
        if event is not None:
            spec["event"] = {"id": event.id, "fields": event.to_redis()}
        if batch_step is not None:
            bspec, bpayload = self.enqueue_spec([batch_step])
            spec["batch_step"] = bspec[0]
            payloads.extend(bpayload)
        res = await self._transition(
            keys=[key or self.keys.job(job_id)], args=[json.dumps(spec), *payloads]
        )
        return Outcome(bool(res[0]), _s(res[1]))

    async def finish_batch(self, batch: Batch, changes: BatchUpdate, event: Event) -> bool:
        """The batch's last job ended: its final status and ``batch.completed``
        (the outbox), once (compare-and-set on ``in_progress``)."""
        out = await self.transition(
            batch.id,
            key=self.keys.batch(batch.id),
            cond={"status": "in_progress"},
            event=event,
            encoded=batch_fields(changes),
        )
        return out.ok

    async def set_fields(
        self, job_id: str, fields: JobUpdate, incr: dict[str, int] | None = None
    ) -> None:
        """Plain write of informational fields (no state change); a job that is
        gone (purged) is not written back."""
        spec = {"set": {**job_fields(fields), "updated_at": f"{now():.3f}"}, "incr": incr or {}}
        await self._update(keys=[self.keys.job(job_id)], args=[json.dumps(spec)])

    async def enqueue(self, steps: list[Step]) -> None:
        """Enqueue arq steps (each skipped if its id is already queued)."""
        enqueue, payloads = self.enqueue_spec(steps)
        spec = {"arq_prefix": job_key_prefix, "enqueue": enqueue}
        await self._enqueue(args=[json.dumps(spec), *payloads])

    async def remember_interaction(self, interaction_id: str, job_id: str, ttl_s: int) -> None:
        await self.redis.set(self.keys.iid(interaction_id), job_id, ex=ttl_s)

    async def job_for_interaction(self, interaction_id: str) -> str | None:
        raw = await self.redis.get(self.keys.iid(interaction_id))
        return _s(raw) if raw is not None else None

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
        jobs = await self.get_jobs([i for i, _ in ids])
        page = Page(items=[j for j in jobs if j is not None])
        if more and ids:
            page.next_cursor = str(ids[-1][1])
        return page

    # -- events ---------------------------------------------------------------
    async def get_event(self, event_id: str) -> Event | None:
        raw = await self.redis.hgetall(self.keys.event(event_id))  # type: ignore[misc]
        return Event.from_redis(raw) if raw else None

    async def get_events(self, event_ids: list[str]) -> list[Event | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for eid in event_ids:
                pipe.hgetall(self.keys.event(eid))
            raws = await pipe.execute()
        return [Event.from_redis(r) if r else None for r in raws]

    async def job_event_ids(self, job_id: str) -> list[str]:
        raw = await self.redis.lrange(self.keys.job_events(job_id), 0, -1)  # type: ignore[misc]
        return [_s(x) for x in raw]

    async def update_event(
        self, event_id: str, fields: EventUpdate, *, dead_for: str | None = None
    ) -> None:
        """Update an event; with ``dead_for=<tenant>`` also dead-letter it. A
        purged event is not written back."""
        spec: dict[str, Any] = {"set": event_fields(fields)}
        if dead_for is not None:
            spec["zadd"] = [self.keys.deadletter(dead_for), str(now()), event_id]
        await self._update(keys=[self.keys.event(event_id)], args=[json.dumps(spec)])

    async def dead_letters(self, tenant: str, limit: int) -> list[Event]:
        ids = await self.redis.zrevrange(self.keys.deadletter(tenant), 0, limit - 1)
        events = [await self.get_event(_s(i)) for i in ids]
        return [e for e in events if e is not None]

    async def undead(self, tenant: str, event_id: str) -> None:
        await self.redis.zrem(self.keys.deadletter(tenant), event_id)

    async def log_attempt(self, event_id: str, attempt: dict[str, Any]) -> None:
        spec = {"push": [self.keys.event_attempts(event_id), json.dumps(attempt), "-100"]}
        await self._update(keys=[self.keys.event(event_id)], args=[json.dumps(spec)])

    async def event_attempts(self, event_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys.event_attempts(event_id), 0, -1)  # type: ignore[misc]
        return [json.loads(x) for x in raw]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
