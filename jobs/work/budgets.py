"""Dispatch budgets shared by every worker through Redis.

Per model or agent (``INTERQ_LIMITS``): a request rate (creates per
``INTERQ_RATE_WINDOW_S``, a moving window from the ``limits`` library) and a
cap on interactions in flight (a Redis zset of job ids, added when a job is
dispatched, removed by the transition that ends or pauses it).

Two stages: the dispatcher moves to the workers as many jobs as the window has
tokens left, less the jobs it already moved whose create has not taken its
token yet (``{p}:outstanding:{model}``, a zset of job ids by dispatch time),
within the in-flight cap; the submit step takes the window token right before
it sends the create. The upstream counts requests when they arrive, so a token
taken at dispatch time would drift from its window by however long the job
waited for a worker. So the window is used from its first second (a batch's
first window's worth of creates goes at once, as the upstream allows) and
never overshot.

The rate adapts to the upstream: a 429 on create cuts the usable share of the
window to 70 % of what it was (once per ``CUT_COOLDOWN_S``), and it recovers
linearly to 100 % over one rate window (``INTERQ_RATE_WINDOW_S``: a minute for a
per-minute quota).

Two pauses, each a Redis key every worker reads (names in
``jobs.observe.metrics``, beside the gauges that export them):

- a per-day quota hold (``{p}:hold:{model}``, the reset time as its value and
  its expiry; the model in ``{p}:holds``): after a 429 whose QuotaFailure
  names a per-day quota, the dispatcher moves no job of that model and a
  dispatched submit waits, until the daily reset or ``interq quota resume``;
- an unhealthy upstream key (``{p}:upstream_key:refused``, ``KEY_FLAG_TTL_S``,
  set again by each 401/403): no create is sent while it is set; any call
  that succeeds clears it (at most once a second per process), and leaves
  ``{p}:upstream_key:ok`` (``KEY_TRUST_S``) behind: the key worked lately.
"""

from __future__ import annotations

import time

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from jobs.settings import Settings
from jobs.storage.keys import Keys

CUT_FACTOR = 0.7
MIN_FACTOR = 0.05
CUT_COOLDOWN_S = 2.0  # a burst of 429s is one signal, not many
KEY_FLAG_TTL_S = 60  # an unhealthy-key flag lasts this long unless a 401/403 renews it
KEY_TRUST_S = 3600  # a key that answered well this recently and is now refused is paused on
KEY_OK_WRITE_S = 1.0  # a process clears the flag at most this often


class Budgets:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        # the window lives on the caller's connection pool (plain, TLS or through
        # Sentinel alike): no second set of connections, and closing ``redis``
        # closes it (limits' async storages have no close of their own)
        self.storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=self.keys.rate_prefix,
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
        )
        self.limiter = MovingWindowRateLimiter(self.storage)
        self._ok_written = 0.0  # monotonic time of this process's last key_ok write

    async def factor(self, model: str) -> float:
        raw = await self.redis.hmget(self.keys.adapt(model), ["factor", "at"])  # type: ignore[misc]
        if not raw[0]:
            return 1.0
        factor, at = float(raw[0]), float(raw[1] or 0)
        recovery_s = float(self.settings.rate_window_s)  # from a cut back to the full rate
        return min(1.0, factor + (1 - CUT_FACTOR) * (time.time() - at) / recovery_s)

    async def cut(self, model: str) -> float:
        """The upstream said 429 to a create: use less of the window for a
        while. 429s within ``CUT_COOLDOWN_S`` of a cut count as the same one."""
        raw = await self.redis.hget(self.keys.adapt(model), "at")  # type: ignore[misc]
        if raw is not None and time.time() - float(raw) < CUT_COOLDOWN_S:
            return await self.factor(model)
        new = max(MIN_FACTOR, await self.factor(model) * CUT_FACTOR)
        await self.redis.hset(  # type: ignore[misc]
            self.keys.adapt(model), mapping={"factor": f"{new:.4f}", "at": f"{time.time():.3f}"}
        )
        return new

    def _usable(self, rpm: int, factor: float) -> int:
        return max(1, int(rpm * self.settings.rate_safety * factor))

    async def acquire(self, model: str, want: int) -> tuple[int, float]:
        """For the dispatcher: up to ``want`` jobs may go to the workers now,
        within the cap on jobs in flight and the window's tokens left (less
        the jobs already moved whose create has not taken its token). Returns
        how many, and if none, how long to wait before asking again."""
        lim = self.settings.limit_for(model)
        granted = want
        if lim.concurrency is not None:
            in_flight = await self.redis.zcard(self.keys.inflight(model))
            granted = min(granted, lim.concurrency - in_flight)
            if granted <= 0:
                return 0, 0.1
        if lim.rpm is None:
            return granted, 0.0
        item = RateLimitItemPerSecond(lim.rpm, self.settings.rate_window_s)
        usable = self._usable(lim.rpm, await self.factor(model))
        ws = await self.limiter.get_window_stats(item, model)
        okey = self.keys.outstanding(model)
        async with self.redis.pipeline(transaction=False) as pipe:
            # a job moved long ago whose create never took its token (a crash,
            # a cancel) stops counting after a window
            pipe.zremrangebyscore(okey, "-inf", (time.time() - self.settings.rate_window_s) * 1000)
            pipe.zcard(okey)
            _, outstanding = await pipe.execute()
        left = usable - (lim.rpm - ws.remaining) - int(outstanding)
        granted = min(granted, left)
        if granted <= 0:
            return 0, max(0.005, min(1.0, ws.reset_time - time.time()))
        return granted, 0.0

    async def take_create(self, model: str, job_id: str = "") -> float:
        """For the submit step, right before the create: one request from the
        model's window. The token is taken when the request is sent, not when
        the job was dispatched, so interq's window and the upstream's (counted
        on arrival) line up. Returns 0 when taken, else how long to wait."""
        lim = self.settings.limit_for(model)
        if lim.rpm is None:
            return 0.0
        item = RateLimitItemPerSecond(lim.rpm, self.settings.rate_window_s)
        usable = self._usable(lim.rpm, await self.factor(model))
        ws = await self.limiter.get_window_stats(item, model)
        if lim.rpm - ws.remaining >= usable or not await self.limiter.hit(item, model):
            return max(0.01, ws.reset_time - time.time())
        if job_id:  # no longer waiting for its token: the dispatcher may move another
            await self.redis.zrem(self.keys.outstanding(model), job_id)
        return 0.0

    # ----------------------------------------------------------- per-day quota hold

    async def hold(self, model: str, until: float) -> None:
        """Hold the model's dispatch until ``until`` (epoch s): a per-day quota."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.quota_hold(model), f"{until:.3f}", pxat=int(until * 1000))
            pipe.sadd(self.keys.quota_holds, model)
            await pipe.execute()

    async def held_until(self, model: str, now: float) -> float:
        """When the model's hold ends (epoch s), or 0 when it is not held."""
        raw = await self.redis.get(self.keys.quota_hold(model))
        until = float(raw) if raw else 0.0
        return until if until > now else 0.0

    async def holds(self) -> dict[str, float]:
        """Every model on hold, with the hold's end (epoch s)."""
        models = sorted(
            m.decode() if isinstance(m, bytes) else str(m)
            for m in await self.redis.smembers(self.keys.quota_holds)  # type: ignore[misc]
        )
        out: dict[str, float] = {}
        for m in models:
            raw = await self.redis.get(self.keys.quota_hold(m))
            if raw:
                out[m] = float(raw)
            else:
                await self.redis.srem(self.keys.quota_holds, m)  # type: ignore[misc]
        return out

    async def release(self, model: str) -> bool:
        """Lift a model's hold before its reset (an operator). True if it was held."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.quota_hold(model))
            pipe.srem(self.keys.quota_holds, model)
            n, _ = await pipe.execute()
        return bool(n)

    # ----------------------------------------------------------- upstream key health

    async def key_refused(self) -> None:
        """The upstream answered 401/403: the key is unhealthy for a while."""
        await self.redis.set(self.keys.key_refused, "1", ex=KEY_FLAG_TTL_S)
        self._ok_written = 0.0  # the next success here clears it at once

    async def key_ok(self) -> None:
        """A call succeeded: the key works (written at most once a second)."""
        now = time.monotonic()
        if self._ok_written and now - self._ok_written < KEY_OK_WRITE_S:
            return
        self._ok_written = now
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.key_refused)
            pipe.set(self.keys.key_ok, "1", ex=KEY_TRUST_S)
            await pipe.execute()

    async def key_unhealthy(self) -> float:
        """Seconds the unhealthy-key flag has left (0: the key is healthy)."""
        ms = int(await self.redis.pttl(self.keys.key_refused))
        return ms / 1000 if ms > 0 else 0.0

    async def key_trusted(self) -> bool:
        """Whether the key answered well within ``KEY_TRUST_S``."""
        return bool(await self.redis.exists(self.keys.key_ok))
