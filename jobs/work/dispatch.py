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

Paused work (``budgets.py``): while the upstream key is refused, a pass moves
nothing; while a model is held for a per-day quota, its lanes' heads stay
where they are (other models' lanes go on).

Per tenant (``tenant_gate.py``, ``INTERQ_TENANT_LIMITS``): a tenant held for
its daily tokens, at its in-flight cap or out of its creates per minute has
its lanes wait; other tenants' lanes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from jobs.domain import batch_pause
from jobs.domain.lifecycle import submit_step
from jobs.services import Services
from jobs.storage.keys import lane_of as lane_of  # re-exported: where callers looked for it
from jobs.storage.scripts import register
from jobs.work.clock import SYSTEM, Clock
from jobs.work.loops import supervised
from jobs.work.tenant_gate import TenantGate

LEASE_MS = 5_000
QUANTUM = 50  # jobs one lane may move per pass: fair, and few round trips per job
IDLE_S = 0.05
PAUSED_S = 1.0  # a paused dispatcher looks again this often


class Dispatcher:
    def __init__(self, svc: Services, clock: Clock = SYSTEM) -> None:
        self.svc = svc
        self.clock = clock
        self.redis: Redis = svc.redis
        self.keys = svc.store.keys
        self.budgets = svc.budgets
        self.tenants = TenantGate(svc, clock)
        self.me = uuid.uuid4().hex
        self.cursor = ""  # last lane served, for round-robin
        self._lua = register(self.redis, "dispatch", "renew_lease")

    async def holds_lease(self) -> bool:
        key = self.keys.dispatcher
        return bool(await self._lua["renew_lease"](keys=[key], args=[self.me, LEASE_MS]))

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
        refused = await self.budgets.key_unhealthy()
        if refused:  # the upstream refuses the key: no creates until it works again
            return min(refused, PAUSED_S)
        self.tenants.new_pass()
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
        """Move the lane's head jobs (same model, within budget) to arq; none
        from a paused batch's lane (``jobs/domain/batch_pause.py``) or from one
        not committed yet (``jobs/storage/batch_write.py``)."""
        tenant, batch_id = lane.split("|", 1)
        if batch_id != "-" and await batch_pause.held(self.svc, batch_id):
            return 0, 0.0
        room, tenant_wait = await self.tenants.allowance(tenant)
        if room == 0:
            return 0, tenant_wait
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
        if room is not None:
            wanted = min(wanted, room)
        granted, wait = await self.grant(model, wanted, blocked)
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
        await self.tenants.moved(tenant, moved)
        return moved, wait

    async def grant(self, model: str | None, wanted: int, blocked: set[str]) -> tuple[int, float]:
        """How many of ``model``'s jobs may go now (and if none, the wait); a
        model held for its per-day quota gets none, and neither does one
        already refused in this pass."""
        if model is None or model in blocked:
            return 0, 0.0
        if await self.budgets.held_until(model, self.clock.time()):
            blocked.add(model)  # per-day quota: nothing of it until the reset
            return 0, PAUSED_S
        granted, wait = await self.budgets.acquire(model, wanted)
        if not granted:
            blocked.add(model)
        return granted, wait

    async def move(self, lane: str, jobs: list[tuple[str, bool]], model: str) -> int:
        """Move ``jobs`` (the lane's head, in order) out of the lane: those to
        send get their submit step, the others (no longer queued) are dropped."""
        k = self.keys
        now_ms = int(time.time() * 1000)
        paced = self.svc.settings.limit_for(model).rpm is not None
        tenant = lane.split("|", 1)[0]
        keys = [k.ready(lane), k.lanes, k.inflight(model), k.models, k.outstanding(model), k.queue]
        keys.append(k.tenant_dispatched(tenant))
        capped = "1" if self.tenants.capped(tenant) else ""
        args: list[Any] = [lane, model, now_ms, "1" if paced else "", capped]
        for jid, send in jobs:
            step = submit_step(jid)
            keys += [k.job(jid), k.arq_job(step.job_id)]
            step_id, payload, score, px = step.entry(now_ms)
            args += [jid, step_id if send else "", payload, score, px]
        return int(await self._lua["dispatch"](keys=keys, args=args))
