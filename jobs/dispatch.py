"""The dispatcher: feeds queued jobs to arq as budgets free, fairly.

Accepted jobs wait in interq's own records, one FIFO lane per tenant and batch
(``{p}:ready:{tenant}|{batch or -}``), not in arq: a 50,000-job backlog can
outlast arq's job expiry and must not hold the queue. One dispatcher runs at a
time (a Redis lease every worker competes for); it visits the lanes
round-robin, up to ``QUANTUM`` jobs per lane per pass, takes that many creates
from the model's budget, and moves the jobs to arq's queue (``submit``) in one
atomic step. So a
small batch behind a huge one starts at once, and a batch goes as fast as its
model's quota allows, no faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

from arq.constants import job_key_prefix
from redis.asyncio import Redis

from .loops import supervised
from .outcomes import submit_step
from .services import Services

LEASE_MS = 5_000
QUANTUM = 50  # jobs one lane may move per pass: fair, and few round trips per job
IDLE_S = 0.05

_DISPATCH = """
local spec = cjson.decode(ARGV[1])
local lk = spec.prefix .. ':ready:' .. spec.lane
local moved = 0
for i, id in ipairs(spec.ids) do
  if redis.call('LINDEX', lk, 0) ~= id then break end
  redis.call('LPOP', lk)
  local jk = spec.prefix .. ':job:' .. id
  local q = spec.steps[i]
  if q.id ~= '' and redis.call('HGET', jk, 'status') == 'queued' then
    redis.call('ZADD', spec.prefix .. ':inflight:' .. spec.model, spec.now, id)
    redis.call('SADD', spec.prefix .. ':models', spec.model)
    if spec.paced then
      redis.call('ZADD', spec.prefix .. ':outstanding:' .. spec.model, spec.now, id)
    end
    local ak = spec.arq_prefix .. q.id
    if redis.call('EXISTS', ak) == 0 then
      redis.call('SET', ak, ARGV[1 + i], 'PX', q.px)
      redis.call('ZADD', q.queue, q.score, q.id)
    end
    moved = moved + 1
  end
end
if redis.call('LLEN', lk) == 0 then redis.call('SREM', spec.prefix .. ':lanes', spec.lane) end
return moved
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


def lane_of(tenant: str, batch_id: str | None) -> str:
    return f"{tenant}|{batch_id or '-'}"


class Dispatcher:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.redis: Redis = svc.redis
        self.keys = svc.store.keys
        self.prefix = svc.settings.key_prefix
        self.budgets = svc.budgets
        self.me = uuid.uuid4().hex
        self.cursor = ""  # last lane served, for round-robin
        self._dispatch = self.redis.register_script(_DISPATCH)
        self._renew = self.redis.register_script(_RENEW)

    async def holds_lease(self) -> bool:
        key = self.keys.dispatcher
        return bool(await self._renew(keys=[key], args=[self.me, LEASE_MS]))

    async def release(self) -> None:
        key = self.keys.dispatcher
        if await self.redis.get(key) == self.me.encode():
            await self.redis.delete(key)

    async def run(self) -> None:
        """Dispatch until cancelled, through any Redis trouble (``supervised``
        logs, counts and backs off); give the lease back on the way out."""
        try:
            await supervised("dispatcher", self.step)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())

    async def step(self) -> float:
        """One turn of the loop: a pass if this process holds the lease.
        Returns how long to wait before the next turn."""
        if not await self.holds_lease():
            return 1.0
        return await self.pass_once()

    async def pass_once(self) -> float:
        """One round-robin pass: up to ``QUANTUM`` jobs from each lane. Returns
        how long to sleep before the next pass."""
        lanes = sorted(
            x.decode() if isinstance(x, bytes) else str(x)
            for x in await self.redis.smembers(self.keys.lanes)  # type: ignore[misc]
        )
        if not lanes:
            return IDLE_S
        start = next((i for i, lane in enumerate(lanes) if lane > self.cursor), 0)
        waits: list[float] = []
        moved = 0
        blocked: set[str] = set()
        for lane in lanes[start:] + lanes[:start]:
            n, wait = await self.serve_lane(lane, blocked)
            moved += n
            if n:
                self.cursor = lane
            if wait:
                waits.append(wait)
        if moved:
            return 0.0
        return min(waits) if waits else IDLE_S

    async def serve_lane(self, lane: str, blocked: set[str]) -> tuple[int, float]:
        """Move the lane's head jobs (same model, within budget) to arq."""
        raw_ids = await self.redis.lrange(self.keys.ready(lane), 0, QUANTUM - 1)  # type: ignore[misc]
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in raw_ids]
        if not ids:
            await self.redis.srem(self.keys.lanes, lane)  # type: ignore[misc]
            return 0, 0.0
        async with self.redis.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hmget(self.keys.job(jid), ["model", "status"])
            rows = await pipe.execute()
        take: list[tuple[str, bool]] = []  # (job id, send it) in lane order
        model = None
        for jid, (m, st) in zip(ids, rows, strict=True):
            m = m.decode() if isinstance(m, bytes) else str(m or "")
            if st not in (b"queued", "queued"):
                take.append((jid, False))  # cancelled while waiting: drop it
                continue
            if model is None:
                model = m
            elif m != model:
                break
            take.append((jid, True))
        wanted = sum(send for _, send in take)
        granted, wait = 0, 0.0
        if model is not None and model not in blocked:
            granted, wait = await self.budgets.acquire(model, wanted)
            if not granted:
                blocked.add(model)
        # keep the dropped ones and as many to send as the budget granted
        kept: list[tuple[str, bool]] = []
        left = granted
        for jid, send in take:
            if send and left == 0:
                break
            kept.append((jid, send))
            left -= send
        if not kept:
            return 0, wait
        moved = await self.move(lane, kept, model or "")
        return moved, wait

    async def move(self, lane: str, jobs: list[tuple[str, bool]], model: str) -> int:
        steps = [submit_step(jid) for jid, _ in jobs]
        enqueue, payloads = self.svc.store.enqueue_spec(steps)
        for spec_i, (_, send) in zip(enqueue, jobs, strict=True):
            if not send:
                spec_i["id"] = ""
        spec = {
            "prefix": self.prefix,
            "lane": lane,
            "ids": [jid for jid, _ in jobs],
            "steps": enqueue,
            "model": model,
            "paced": self.svc.settings.limit_for(model).rpm is not None,
            "now": enqueue[0]["score"],
            "arq_prefix": job_key_prefix,
        }
        return int(await self._dispatch(args=[json.dumps(spec), *payloads]))
