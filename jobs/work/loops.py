"""The one supervisor for every background loop (dispatcher, poll engine,
delivery, sweeper) and the restart loop of the arq worker itself.

A loop is a ``step`` coroutine function called forever: it does one pass and
returns how many seconds to wait before the next. An exception from a step never
ends the loop: it is logged (the loop's name, the kind of error and its class,
never its arguments), counted in ``interq_loop_errors_total{loop,kind}``, and the
next try waits an exponential backoff with jitter (0.1 s doubling to 5 s), reset
by the next pass that ends well. ``asyncio.CancelledError`` is how a loop is
stopped, and passes through.

Wiring a new loop: write ``async def step() -> float`` and run
``asyncio.create_task(supervised("poller", step))``; add its name to
``metrics.LOOP_NAMES`` so its series exist from the start.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from jobs.observe import metrics

log = logging.getLogger("interq.loops")

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0


class Backoff:
    """Exponential backoff with jitter over consecutive failures."""

    def __init__(self, initial: float = BACKOFF_INITIAL_S, cap: float = BACKOFF_MAX_S) -> None:
        self.initial, self.cap = initial, cap
        self.failures = 0

    def next(self) -> float:
        """The wait after one more failure: half fixed, half random, so that
        many processes that failed together do not retry together."""
        step = min(self.cap, self.initial * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return step / 2 + random.uniform(0, step / 2)

    def reset(self) -> None:
        self.failures = 0


def record_error(loop: str, exc: BaseException, retry_in: float, *, streak: int) -> str:
    """Log and count one error of ``loop``; returns its kind. The first error of
    a streak that is not a known Redis condition carries its traceback."""
    kind = metrics.redis_error_kind(exc)
    metrics.LOOP_ERRORS.labels(loop=loop, kind=kind).inc()
    log.warning(
        "%s loop: %s error (%s), retrying in %.2fs",
        loop,
        kind,
        type(exc).__name__,
        retry_in,
        exc_info=exc if kind == "other" and streak == 1 else None,
        extra={"loop": loop, "error_kind": kind, "error_class": type(exc).__name__},
    )
    return kind


def record_success(loop: str, *, after_errors: int = 0) -> None:
    metrics.LOOP_ITERATIONS.labels(loop=loop).inc()
    metrics.LOOP_LAST_SUCCESS.labels(loop=loop).set(time.time())
    if after_errors:
        log.info("%s loop: recovered after %d error(s)", loop, after_errors, extra={"loop": loop})


async def supervised(
    name: str, step: Callable[[], Awaitable[float]], *, backoff: Backoff | None = None
) -> None:
    """Run ``step`` forever under the name ``name`` (a ``metrics.LOOP_NAMES``
    entry), sleeping the seconds it returns; survive every ``Exception``."""
    b = backoff or Backoff()
    while True:
        try:
            wait = await step()
        except Exception as e:  # a loop outlives any error of one of its passes
            delay = b.next()
            record_error(name, e, delay, streak=b.failures)
            await asyncio.sleep(delay)
            continue
        record_success(name, after_errors=b.failures)
        b.reset()
        await asyncio.sleep(max(0.0, wait))
