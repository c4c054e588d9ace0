"""One Redis subscription per API process, however many watchers.

``Hub`` subscribes to the changes channel (``Keys.changes_channel``) once and
wakes the in-memory waiters of the object each message names (``job:<id>``,
``batch:<id>``). A watcher (an SSE stream, a ``?wait=`` GET) registers a
waiter, reads what it needs from Redis, and awaits its waiter with a timeout
(the heartbeat): a lost message, or a subscription being re-made after a
Redis outage, costs at most one heartbeat of delay, never a missed change,
because the truth is the change stream, re-read on every wake. A waiter that
goes away (a client disconnects) is one set entry removed.

``shared(ref, key, load)`` runs one read for every watcher that asks for the
same thing at the same time (a thousand watchers of one batch woken together
make one round trip, not a thousand). A read is shared only by callers that
asked before any wake-up of ``ref`` came after it started: a watcher never
gets an answer older than the last wake-up it saw cleared.

The hub is started and stopped by the lifespan of the events router
(``jobs/http/routes/events.py``), inside the app's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from redis.asyncio import Redis

from jobs.observe import metrics
from jobs.work.loops import Backoff, record_error

log = logging.getLogger("interq.watch")
T = TypeVar("T")


class Hub:
    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._flights: dict[Any, asyncio.Future[Any]] = {}
        self._wakes: dict[str, int] = {}  # per watched ref: the number of its last wake-up
        self._seq = 0  # wake-ups (and first waiters) so far, all refs
        self._epoch = 0  # wake_all()s so far
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set while the subscription is up

    # -- the subscription -----------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="watch-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.wake_all()

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._listen(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.subscribed.clear()
                pause = backoff.next()
                record_error("watch", e, pause, streak=backoff.failures)
                self.wake_all()  # they re-read: messages may have been lost
                await asyncio.sleep(pause)

    async def _listen(self, backoff: Backoff) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.subscribed.set()
            self.wake_all()  # anything published before we (re)subscribed
            backoff.reset()
            while True:
                msg = await pubsub.get_message(timeout=30.0)
                metrics.LOOP_ITERATIONS.labels(loop="watch").inc()
                if msg is not None and msg.get("type") == "message":
                    data = msg["data"]
                    self.wake(data.decode() if isinstance(data, bytes) else str(data))
        finally:
            self.subscribed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- waiters ----------------------------------------------------------------
    @contextlib.contextmanager
    def waiter(self, ref: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``ref`` ("job:<id>", "batch:<id>") changes."""
        ev = asyncio.Event()
        if ref not in self._waiters:  # a number no read in flight can have
            self._seq += 1
            self._wakes[ref] = self._seq
        self._waiters.setdefault(ref, set()).add(ev)
        try:
            yield ev
        finally:
            group = self._waiters.get(ref)
            if group is not None:
                group.discard(ev)
                if not group:
                    del self._waiters[ref]
                    self._wakes.pop(ref, None)

    def wake(self, ref: str) -> None:
        group = self._waiters.get(ref)
        if not group:
            return
        self._seq += 1
        self._wakes[ref] = self._seq
        for ev in group:
            ev.set()

    def wake_all(self) -> None:
        self._epoch += 1
        for group in self._waiters.values():
            for ev in group:
                ev.set()

    @property
    def watchers(self) -> int:
        return sum(len(g) for g in self._waiters.values())

    async def shared(self, ref: str, key: Any, load: Callable[[], Awaitable[T]]) -> T:
        """``load()``, run once for all callers that ask for ``key`` of ``ref``
        meanwhile (and since its last wake-up)."""
        key = (ref, key, self._wakes.get(ref, 0), self._epoch)
        fut = self._flights.get(key)
        if fut is None:
            fut = asyncio.ensure_future(load())
            self._flights[key] = fut
            fut.add_done_callback(lambda f: self._landed(key, f))
        result: T = await asyncio.shield(fut)
        return result

    def _landed(self, key: Any, fut: asyncio.Future[Any]) -> None:
        self._flights.pop(key, None)
        if not fut.cancelled():
            fut.exception()  # retrieved: every caller that waited has it raised


async def wait_for(ev: asyncio.Event, seconds: float) -> bool:
    """Wait for ``ev`` at most ``seconds``; True if it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ev.wait(), seconds)
    return ev.is_set()
