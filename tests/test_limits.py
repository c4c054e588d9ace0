"""Dispatch budgets: rate and concurrency caps shared through Redis, adaptive on 429."""

from __future__ import annotations

import time

import redis.asyncio as aredis

from jobs.settings import ModelLimit, Settings
from jobs.work.budgets import Budgets


async def acquired(b: Budgets, model: str, tries: int) -> int:
    n = 0
    for _ in range(tries):
        if await b.take_create(model) == 0:
            n += 1
    return n


async def test_rate_budget_and_429_cut(clean_redis: str) -> None:
    # an hour-long window: no token comes back while the test runs, however slowly
    cfg = Settings(
        redis_url=clean_redis, limits={"m": ModelLimit(rpm=10)}, rate_safety=1.0, rate_window_s=3600
    )
    r = aredis.Redis.from_url(clean_redis)
    b = Budgets(cfg, r)
    # dispatch: as many as the window has tokens left, less those moved and not yet sent
    assert (await b.acquire("m", 15))[0] == 10
    await r.zadd(b.keys.outstanding("m"), {"job_a": time.time() * 1000})
    assert (await b.acquire("m", 15))[0] == 9
    assert await acquired(b, "m", 15) == 10  # the window holds 10
    assert await b.take_create("m") > 0  # and says how long to wait
    granted, wait = await b.acquire("m", 1)
    assert granted == 0 and wait > 0

    # the cut recovers over one window (an hour here), not within the test
    other = Budgets(cfg.model_copy(update={"key_prefix": "other"}), r)
    assert await other.factor("m") == 1.0
    await other.cut("m")
    await other.cut("m")  # a burst of 429s is one signal
    assert 0.69 < await other.factor("m") < 0.75  # cut to 70 %, recovering slowly
    assert await acquired(other, "m", 15) == 7
    await r.aclose()


async def test_concurrency_budget_counts_jobs_in_flight(clean_redis: str) -> None:
    cfg = Settings(redis_url=clean_redis, limits={"*": ModelLimit(concurrency=2)})
    r = aredis.Redis.from_url(clean_redis)
    b = Budgets(cfg, r)
    assert await b.acquire("any", 5) == (2, 0.0)
    await r.zadd(b.keys.inflight("any"), {"job_1": 1, "job_2": 2})
    assert (await b.acquire("any", 1))[0] == 0
    await r.zrem(b.keys.inflight("any"), "job_1")
    assert await b.acquire("any", 5) == (1, 0.0)
    await r.aclose()


def test_waiting_steps_never_run_out_of_arq_tries(settings: Settings) -> None:
    """arq drops a job whose tries are used up; submit waits on budgets with
    Retry, so it may not have a small max_tries (polls are not arq jobs)."""
    from worker import make_worker

    w = make_worker(settings)
    assert w.functions["submit"].max_tries >= 1_000_000
