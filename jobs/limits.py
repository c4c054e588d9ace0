"""Dispatch budgets shared by every worker through Redis.

Per model or agent (``INTERQ_LIMITS``): a request rate (creates per
``INTERQ_RATE_WINDOW_S``, a moving window from the ``limits`` library) and a
cap on interactions in flight (a Redis zset of job ids, added when a job is
dispatched, removed by the transition that ends or pauses it).

Creates are also paced to the window's share per second (a second, 1-second
moving window), so they reach the upstream as an even stream: a burst of a
whole window at once would arrive spread by worker latency, and the upstream's
window (counted on arrival) would then overlap the next burst.

The rate adapts to the upstream: a 429 on create cuts the usable share of the
window to 70 % of what it was (once per ``CUT_COOLDOWN_S``), and it recovers
linearly to 100 % over ``RECOVERY_S``.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from .settings import Settings

CUT_FACTOR = 0.7
MIN_FACTOR = 0.05
RECOVERY_S = 60.0  # from a cut back to the full rate
CUT_COOLDOWN_S = 2.0  # a burst of 429s is one signal, not many


class Budgets:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.prefix = settings.key_prefix
        self.storage = RedisStorage(
            "async+" + settings.effective_redis_url,
            implementation="redispy",
            key_prefix=f"{self.prefix}:rate",
        )
        self.limiter = MovingWindowRateLimiter(self.storage)

    def inflight_key(self, model: str) -> str:
        return f"{self.prefix}:inflight:{model}"

    def _adapt_key(self, model: str) -> str:
        return f"{self.prefix}:adapt:{model}"

    async def factor(self, model: str) -> float:
        raw = await self.redis.hmget(self._adapt_key(model), ["factor", "at"])  # type: ignore[misc]
        if not raw[0]:
            return 1.0
        factor, at = float(raw[0]), float(raw[1] or 0)
        return min(1.0, factor + (1 - CUT_FACTOR) * (time.time() - at) / RECOVERY_S)

    async def cut(self, model: str) -> float:
        """The upstream said 429 to a create: use less of the window for a
        while. 429s within ``CUT_COOLDOWN_S`` of a cut count as the same one."""
        raw = await self.redis.hget(self._adapt_key(model), "at")  # type: ignore[misc]
        if raw is not None and time.time() - float(raw) < CUT_COOLDOWN_S:
            return await self.factor(model)
        new = max(MIN_FACTOR, await self.factor(model) * CUT_FACTOR)
        await self.redis.hset(  # type: ignore[misc]
            self._adapt_key(model), mapping={"factor": f"{new:.4f}", "at": f"{time.time():.3f}"}
        )
        return new

    async def acquire(self, model: str, want: int) -> tuple[int, float]:
        """Take up to ``want`` creates from the model's budget. Returns how many
        were granted and, if none, how long to wait before asking again."""
        lim = self.settings.limit_for(model)
        granted = want
        if lim.concurrency is not None:
            granted = min(
                granted, lim.concurrency - await self.redis.zcard(self.inflight_key(model))
            )
            if granted <= 0:
                return 0, 0.1
        if lim.rpm is None:
            return granted, 0.0
        window = self.settings.rate_window_s
        usable = max(1, int(lim.rpm * self.settings.rate_safety * await self.factor(model)))
        item = RateLimitItemPerSecond(lim.rpm, window)
        # pacing: at most the window's share per second, so creates reach the
        # upstream as an even stream whose window lines up with ours
        pace = RateLimitItemPerSecond(max(1, math.ceil(lim.rpm / window)), 1)
        usable_pace = max(1, math.ceil(usable / window))
        ws = await self.limiter.get_window_stats(item, model)
        ps = await self.limiter.get_window_stats(pace, model, "pace")
        free_window = usable - (lim.rpm - ws.remaining)
        free_pace = usable_pace - (pace.amount - ps.remaining)
        granted = min(granted, free_window, free_pace)
        if granted <= 0:
            reset = ws.reset_time if free_window <= 0 else ps.reset_time
            return 0, max(0.005, reset - time.time())
        if not await self.limiter.hit(pace, model, "pace", cost=granted):
            return 0, 0.01
        if not await self.limiter.hit(item, model, cost=granted):
            return 0, 0.01
        return granted, 0.0

    async def try_acquire(self, model: str) -> float:
        """Take one create. Returns 0 when taken, else how long to wait."""
        granted, wait = await self.acquire(model, 1)
        return 0.0 if granted else wait
