"""The dispatcher: feeds queued jobs to arq as budgets free, fairly.

Accepted jobs wait in interq's own records, one FIFO lane per tenant and batch
(``{p}:ready:{tenant}|{batch or -}``), not in arq: a 50,000-job backlog can
outlast arq's job expiry and must not hold the queue. One dispatcher runs at a
time (a Redis lease every worker competes for); it visits the lanes
round-robin, one job per lane per pass, takes one create from the job's model
budget, and moves the job to arq's queue (``submit``) in one atomic step. So a
small batch behind a huge one starts at once, and a batch goes as fast as its
model's quota allows, no faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .outcomes import submit_step
from .services import Services

log = logging.getLogger("interq.dispatch")

LEASE_MS = 5_000
IDLE_S = 0.05

_DISPATCH = """
local spec = cjson.decode(ARGV[1])
local lk = spec.prefix .. ':ready:' .. spec.lane
if redis.call('LINDEX', lk, 0) ~= spec.id then return 0 end
redis.call('LPOP', lk)
if redis.call('LLEN', lk) == 0 then redis.call('SREM', spec.prefix .. ':lanes', spec.lane) end
local jk = spec.prefix .. ':job:' .. spec.id
if redis.call('HGET', jk, 'status') ~= 'queued' then return 2 end
redis.call('ZADD', spec.prefix .. ':inflight:' .. spec.model, spec.now, spec.id)
local ak = spec.arq_prefix .. spec.step.id
if redis.call('EXISTS', ak) == 0 then
  redis.call('SET', ak, ARGV[2], 'PX', spec.step.px)
  redis.call('ZADD', spec.step.queue, spec.step.score, spec.step.id)
end
return 1
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
        self.prefix = svc.settings.key_prefix
        self.budgets = svc.budgets
        self.me = uuid.uuid4().hex
        self.cursor = ""  # last lane served, for round-robin
        self._dispatch = self.redis.register_script(_DISPATCH)
        self._renew = self.redis.register_script(_RENEW)
        self.dispatched = 0

    async def holds_lease(self) -> bool:
        key = f"{self.prefix}:dispatcher"
        return bool(await self._renew(keys=[key], args=[self.me, LEASE_MS]))

    async def release(self) -> None:
        key = f"{self.prefix}:dispatcher"
        if await self.redis.get(key) == self.me.encode():
            await self.redis.delete(key)

    async def run(self) -> None:
        """Dispatch until cancelled; survive Redis outages."""
        try:
            await self._loop()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())

    async def _loop(self) -> None:
        while True:
            try:
                if not await self.holds_lease():
                    await asyncio.sleep(1.0)
                    continue
                wait = await self.pass_once()
                await asyncio.sleep(wait)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                log.warning("dispatcher: redis unavailable (%s); retrying", type(e).__name__)
                await asyncio.sleep(1.0)

    async def pass_once(self) -> float:
        """One round-robin pass over the lanes. Returns how long to sleep."""
        lanes = sorted(
            x.decode() if isinstance(x, bytes) else str(x)
            for x in await self.redis.smembers(f"{self.prefix}:lanes")  # type: ignore[misc]
        )
        if not lanes:
            return IDLE_S
        start = next((i for i, lane in enumerate(lanes) if lane > self.cursor), 0)
        order = lanes[start:] + lanes[:start]
        waits: list[float] = []
        moved = 0
        blocked: dict[str, float] = {}
        for lane in order:
            head = await self.redis.lindex(f"{self.prefix}:ready:{lane}", 0)  # type: ignore[misc]
            if head is None:
                await self.redis.srem(f"{self.prefix}:lanes", lane)  # type: ignore[misc]
                continue
            job_id = head.decode() if isinstance(head, bytes) else str(head)
            raw = await self.redis.hmget(f"{self.prefix}:job:{job_id}", ["model", "status"])  # type: ignore[misc]
            model, status = (x.decode() if isinstance(x, bytes) else str(x or "") for x in raw)
            if status != "queued":  # cancelled while waiting: drop it from the lane
                await self.move(lane, job_id, model)
                continue
            if model in blocked:
                continue
            wait = await self.budgets.try_acquire(model)
            if wait > 0:
                blocked[model] = wait
                waits.append(wait)
                continue
            if await self.move(lane, job_id, model):
                moved += 1
                self.cursor = lane
        if moved:
            return 0.0
        return min(waits) if waits else IDLE_S

    async def move(self, lane: str, job_id: str, model: str) -> bool:
        step = submit_step(job_id)
        enqueue, payloads = self.svc.store._enqueue_spec([step])
        spec = {
            "prefix": self.prefix,
            "lane": lane,
            "id": job_id,
            "model": model,
            "now": enqueue[0]["score"],
            "arq_prefix": job_key_prefix,
            "step": enqueue[0],
        }
        res = await self._dispatch(args=[json.dumps(spec), payloads[0]])
        if res == 1:
            self.dispatched += 1
        return bool(res == 1)
