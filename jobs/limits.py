"""Dispatch budgets shared by every worker through Redis.

Per model or agent (``INTERQ_LIMITS``): a request rate (creates per
``INTERQ_RATE_WINDOW_S``, a moving window from the ``limits`` library) and a
cap on interactions in flight (a Redis zset of job ids, added when a job is
dispatched, removed by the transition that ends or pauses it).

The rate adapts to the upstream: a 429 on create cuts the usable share of the
window to 70 % of what it was, and it recovers linearly to 100 % over
``RECOVERY_S``.
"""

from __future__ import annotations

import time

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from .settings import Settings

CUT_FACTOR = 0.7
MIN_FACTOR = 0.05
RECOVERY_S = 60.0  # from a cut back to the full rate


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
        """The upstream said 429 to a create: use less of the window for a while."""
        new = max(MIN_FACTOR, await self.factor(model) * CUT_FACTOR)
        await self.redis.hset(  # type: ignore[misc]
            self._adapt_key(model), mapping={"factor": f"{new:.4f}", "at": f"{time.time():.3f}"}
        )
        return new

    async def try_acquire(self, model: str) -> float:
        """Take one create from the model's budget. Returns 0 when taken, else
        how long to wait before asking again (seconds)."""
        lim = self.settings.limit_for(model)
        if lim.concurrency is not None:
            if await self.redis.zcard(self.inflight_key(model)) >= lim.concurrency:
                return 0.1
        if lim.rpm is None:
            return 0.0
        window = self.settings.rate_window_s
        item = RateLimitItemPerSecond(lim.rpm, window)
        usable = max(1, int(lim.rpm * self.settings.rate_safety * await self.factor(model)))
        stats = await self.limiter.get_window_stats(item, model)
        if lim.rpm - stats.remaining >= usable:
            return max(0.01, stats.reset_time - time.time())
        if not await self.limiter.hit(item, model):
            return max(0.01, stats.reset_time - time.time())
        return 0.0
