"""A due-time index worked by a loop: the machinery the poll and delivery
engines share.

Work that waits (the next poll of a running interaction, the next attempt of a
webhook event) is an entry in a Redis zset, member -> due time in ms. Each
worker runs one loop per index (see ``DueEngine.step``):

1. claim up to ``batch`` due entries in one script call (``lua/claim_due.lua``),
   which moves each claimed entry's due time forward by the lease: a worker
   killed while it holds claims leaves them due again when the lease ends;
2. read the entries' records in one pipelined round trip (``prefetch``) and
   hand each entry to ``handle`` as its own task, at most ``capacity`` at once
   (an entry this process is still working on is not started twice);
3. queue what each task returns (its next due time and the fields to write)
   and write the queue back in one pipelined round trip per loop turn.

``lag`` is how late an entry was claimed (now - due). When entries fall due
faster than the loop can start them, the lag grows: the engine reports it
(metrics, a log line at most once a minute) and its subclasses spread the next
due times over the lag, so that load evens out instead of piling up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from jobs.storage.scripts import lua
from jobs.work.clock import SYSTEM, Clock

log = logging.getLogger("interq.engine")

OVERLOAD_LAG_S = 1.0  # claimed this late on average: the engine says it is behind
OVERLOAD_LOG_EVERY_S = 60.0
LAG_SMOOTHING = 0.2  # weight of the newest batch in the lag average


@dataclass
class Write:
    """What one task leaves for the write-back: its script's keys and args."""

    keys: list[str]
    args: list[str | int | float]


@dataclass
class DueEngine:
    """One loop over one due-time index. Subclasses define ``handle``."""

    redis: Redis
    index: str  # the zset key
    capacity: int  # tasks at once
    batch: int  # entries claimed per round trip
    lease_s: float
    idle_s: float  # longest sleep when nothing is due
    task_timeout_s: float  # one entry's work, at most (then it counts as a fault)
    name: str = "engine"
    clock: Clock = SYSTEM  # due times, lag, leases (a test passes its own)
    active: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # member -> monotonic start
    writes: list[Write] = field(default_factory=list)
    lag_avg: float = 0.0
    overloaded: bool = False
    _last_overload_log: float = 0.0

    def __post_init__(self) -> None:
        self._claim = self.redis.register_script(lua("claim_due"))
        self._changed = asyncio.Event()

    # -- to define ---------------------------------------------------------------
    async def handle(self, member: str, lag_s: float, record: Any) -> Write | None:
        raise NotImplementedError

    async def prefetch(self, members: list[str]) -> list[Any]:
        """The records the tasks will need, read in one round trip."""
        return [None] * len(members)

    def write_script(self) -> Any:
        raise NotImplementedError

    def observe_lag(self, lags: list[float]) -> None:
        """Hook for metrics."""

    # -- the loop ------------------------------------------------------------------
    async def step(self) -> float:
        """One turn: write back what finished, claim and start what is due.
        Returns how long to sleep before the next turn."""
        await self.flush()
        await self._renew()
        free = self.capacity - len(self.active)
        if free <= 0:
            await self._wait_for_change(self.idle_s)
            return 0.0
        now_ms = int(self.clock.time() * 1000)
        raw = await self._claim(
            keys=[self.index], args=[now_ms, int(self.lease_s * 1000), min(free, self.batch)]
        )
        claimed = [(_s(raw[i]), float(raw[i + 1])) for i in range(0, len(raw), 2)]
        if not claimed:
            self._note_lag([])
            return await self._until_next_due(now_ms)
        lags = [max(0.0, (now_ms - due) / 1000) for _, due in claimed]
        self._note_lag(lags)
        fresh = [
            (m, lag) for (m, _), lag in zip(claimed, lags, strict=True) if m not in self.active
        ]
        records = await self.prefetch([m for m, _ in fresh])
        started = self.clock.monotonic()
        for (member, lag), record in zip(fresh, records, strict=True):
            self.active[member] = asyncio.create_task(self._run(member, lag, record))
            self.started[member] = started
        return 0.0

    async def _run(self, member: str, lag: float, record: Any) -> None:
        try:
            async with asyncio.timeout(self.task_timeout_s):
                w = await self.handle(member, lag, record)
            if w is not None:
                self.writes.append(w)
        except TimeoutError:
            log.warning(
                "%s: %s took longer than %.1f s; it comes due again after its lease",
                self.name,
                member,
                self.task_timeout_s,
            )
        except Exception:
            # still leased: the entry comes due again when the lease ends
            log.exception("%s: %s failed; it comes due again after its lease", self.name, member)
        finally:
            self.active.pop(member, None)
            self.started.pop(member, None)
            self._changed.set()

    async def _renew(self) -> None:
        """Extend the lease of entries still in progress here past half of it,
        so that a slow answer is not claimed a second time by another worker."""
        now = self.clock.monotonic()
        old = [m for m, t in self.started.items() if now - t > self.lease_s / 2]
        if old:
            until = int((self.clock.time() + self.lease_s) * 1000)
            await self.redis.zadd(self.index, dict.fromkeys(old, until), xx=True, gt=True)
            for m in old:
                self.started[m] = now

    async def flush(self) -> None:
        """Write back every queued result in one pipelined round trip. On a
        Redis error the writes are kept for the next turn (and the entries,
        still leased, come due again if they never land)."""
        if not self.writes:
            return
        writes, self.writes = self.writes, []
        script = self.write_script()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for w in writes:
                    await script(keys=w.keys, args=w.args, client=pipe)
                await pipe.execute()
        except BaseException:
            self.writes = writes + self.writes
            raise

    async def _until_next_due(self, now_ms: int) -> float:
        first = await self.redis.zrange(self.index, 0, 0, withscores=True)
        wait = self.idle_s
        if first:
            wait = min(wait, max(0.0, (float(first[0][1]) - now_ms) / 1000))
        if wait > 0 and (self.active or self.writes):
            await self._wait_for_change(wait)
            return 0.0
        return wait

    async def _wait_for_change(self, wait_s: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._changed.wait()

    def _note_lag(self, lags: list[float]) -> None:
        self.observe_lag(lags)
        mean = sum(lags) / len(lags) if lags else 0.0
        self.lag_avg += LAG_SMOOTHING * (mean - self.lag_avg)
        self.overloaded = self.lag_avg > OVERLOAD_LAG_S
        now = self.clock.monotonic()
        if self.overloaded and now - self._last_overload_log > OVERLOAD_LOG_EVERY_S:
            self._last_overload_log = now
            log.warning(
                "%s: work falls due faster than this worker starts it (lag %.1f s, %d "
                "in progress): spreading the next due times; add workers",
                self.name,
                self.lag_avg,
                len(self.active),
            )

    def spread(self) -> float:
        """Extra delay to add to a next due time while behind: the lag, so
        that entries due together come back spread over it."""
        return self.lag_avg if self.overloaded else 0.0

    async def stop(self) -> None:
        """Cancel the tasks in progress (their entries stay leased and come
        due again) and write back what finished."""
        for t in list(self.active.values()):
            t.cancel()
        await asyncio.gather(*self.active.values(), return_exceptions=True)
        self.active.clear()
        self.started.clear()
        with contextlib.suppress(Exception):
            await self.flush()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
