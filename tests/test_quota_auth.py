"""Per-day quotas, a refused upstream key and 409, on a fake clock against a
real Redis, the upstream an ``httpx.MockTransport`` (``tests/fakeclock.py``):

- a 429 whose QuotaFailure names a per-day quota holds the model's dispatch
  until the daily reset (midnight Pacific): the job stays queued, no attempt
  counted, the rate share not cut, and it is sent after the reset (the clock
  moved past it) or once an operator lifts the hold (``interq quota resume``);
- a 401/403 pauses work instead of failing jobs: no creates, polls retried,
  ``/readyz`` says ``upstream_key: refused``, and work resumes with the first success;
- 409 is retried like 5xx.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import Retry
from typer.testing import CliRunner

from jobs.cli.main import app as cli
from jobs.domain.statuses import JobStatus
from jobs.http.errors import readiness
from jobs.observe import metrics
from jobs.services import Services
from jobs.settings import ModelLimit, get_settings
from jobs.upstream.backends import Answer
from jobs.upstream.client import QuotaExhausted, Retryable, daily_reset, error_from_answer
from jobs.work.dispatch import Dispatcher
from jobs.work.poller import PollEngine
from jobs.work.steps import PAUSE_RECHECK_S, submit
from tests.fakeclock import (
    FakeClock,
    Upstream,
    clocked_services,
    error,
    interaction,
    queued_job,
    reread,
    turn,
)

MODEL = "sim-model"
PER_DAY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


def quota_429(quota_id: str = PER_DAY, metric: str = "generate_requests") -> httpx.Response:
    """A Gemini-shaped 429: QuotaFailure naming the quota, RetryInfo's delay."""
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
                    "quotaId": quota_id,
                    "quotaDimensions": {"model": MODEL},
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "40s"},
    ]
    err = {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": details}
    return httpx.Response(429, json={"error": err})


def created(status: str = "in_progress") -> httpx.Response:
    return httpx.Response(200, json={"id": "int_1", "status": status})


@pytest.fixture()
async def svc(clean_redis: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Services]:
    async with clocked_services(
        clean_redis,
        tmp_path,
        upstream,
        poll_initial_s=2.0,
        poll_jitter=0.0,
        retry_initial_s=10.0,
        retry_max_s=600.0,
        limits={MODEL: ModelLimit(rpm=100)},
    ) as s:
        yield s


async def lane_length(svc: Services) -> int:
    return int(await svc.redis.llen(svc.store.keys.ready("t1|-")))  # type: ignore[misc]


async def submit_defers(svc: Services, clock: FakeClock, job_id: str) -> float:
    """Run the submit step; it must defer. Returns the defer in seconds."""
    with pytest.raises(Retry) as retry:
        await submit({"svc": svc, "clock": clock}, job_id)
    assert retry.value.defer_score is not None
    return retry.value.defer_score / 1000


# --------------------------------------------------------------------------- classes


def test_a_per_day_quota_failure_is_its_own_retryable_with_the_reset() -> None:
    def classify(resp: httpx.Response) -> Any:
        return error_from_answer(Answer(resp.status_code, resp.headers, resp.content))

    err = classify(quota_429())
    assert isinstance(err, QuotaExhausted) and err.quota_id == PER_DAY
    la = dt.datetime.fromtimestamp(err.reset_at, zoneinfo.ZoneInfo("America/Los_Angeles"))
    assert (la.hour, la.minute, la.second) == (0, 0, 0)
    assert 0 < err.reset_at - dt.datetime.now().timestamp() <= 25 * 3600
    by_metric = classify(quota_429(quota_id="", metric="generate_requests_per_day"))
    assert isinstance(by_metric, QuotaExhausted)
    per_minute = classify(quota_429(quota_id="GenerateRequestsPerMinutePerProjectPerModel"))
    assert isinstance(per_minute, Retryable) and not isinstance(per_minute, QuotaExhausted)
    assert per_minute.delay_s == 40.0
    conflict = classify(error(409))
    assert isinstance(conflict, Retryable) and conflict.status_code == 409


def test_the_daily_reset_is_the_next_midnight_in_los_angeles() -> None:
    la = zoneinfo.ZoneInfo("America/Los_Angeles")
    # 23:30 PDT on 2026-07-01 -> midnight PDT (07:00 UTC); 00:00:01 -> the next day's
    late = dt.datetime(2026, 7, 1, 23, 30, tzinfo=la).timestamp()
    assert daily_reset(late) == dt.datetime(2026, 7, 2, tzinfo=la).timestamp()
    early = dt.datetime(2026, 7, 2, 0, 0, 1, tzinfo=la).timestamp()
    assert daily_reset(early) == dt.datetime(2026, 7, 3, tzinfo=la).timestamp()
    # the day DST ends (25 hours long) is still one midnight to the next
    fall = dt.datetime(2026, 11, 1, 0, 30, tzinfo=la).timestamp()
    assert daily_reset(fall) - fall == 24.5 * 3600


# --------------------------------------------------------------------------- per-day quota


async def test_a_per_day_quota_429_holds_the_model_until_the_reset(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    first = await queued_job(svc, clock, timeout_s=2 * 86_400.0)
    dispatcher = Dispatcher(svc, clock)
    upstream.answers["create"] = [quota_429(), created()]
    assert await dispatcher.pass_once() == 0.0 and await lane_length(svc) == 0
    defer = await submit_defers(svc, clock, first.id)
    assert defer <= PAUSE_RECHECK_S * 1.1  # looks again soon: a hold may be lifted early
    held = await reread(svc, first.id)
    assert held.status == JobStatus.queued and held.submit_attempts == 0
    assert not held.create_inflight
    reset = daily_reset(clock.time())
    assert await svc.budgets.held_until(MODEL, clock.time()) == pytest.approx(reset, abs=0.01)
    assert await svc.budgets.factor(MODEL) == 1.0  # the rate share was not cut
    await metrics.refresh_pause_gauges(svc.redis, svc.store.keys)
    assert metrics.QUOTA_HELD.labels(model=MODEL)._value.get() == 1

    # held: the dispatcher moves nothing of the model, a dispatched submit sends nothing
    second = await queued_job(svc, clock, timeout_s=2 * 86_400.0)
    await dispatcher.pass_once()
    assert await lane_length(svc) == 1
    await submit_defers(svc, clock, first.id)
    assert upstream.ops.count("create") == 1

    clock.advance(reset - clock.time() + 1)  # past midnight Pacific
    await dispatcher.pass_once()
    assert await lane_length(svc) == 0
    for jid in (first.id, second.id):
        await submit({"svc": svc, "clock": clock}, jid)
        assert (await reread(svc, jid)).status == JobStatus.running
    assert upstream.ops.count("create") == 3


async def interq(*args: str) -> str:
    """The ``interq`` command in a thread (it runs its own event loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def test_an_operator_lifts_a_hold_with_interq_quota_resume(
    svc: Services, clock: FakeClock, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await queued_job(svc, clock)
    upstream.answers["create"] = [quota_429(), created()]
    await submit_defers(svc, clock, job.id)
    monkeypatch.setenv("INTERQ_REDIS_URL", svc.settings.redis_url or "")
    monkeypatch.setenv("INTERQ_KEY_PREFIX", svc.settings.key_prefix)
    get_settings.cache_clear()
    try:
        shown = await interq("quota", "status")
        assert f"{MODEL}: held until" in shown and "upstream key: healthy" in shown
        assert "hold lifted" in await interq("quota", "resume", MODEL)
        assert "not held" in await interq("quota", "resume", MODEL)
    finally:
        get_settings.cache_clear()
    assert await svc.budgets.held_until(MODEL, clock.time()) == 0.0
    await submit({"svc": svc, "clock": clock}, job.id)  # same clock: no reset passed
    assert (await reread(svc, job.id)).status == JobStatus.running


# --------------------------------------------------------------------------- the key


async def ready(svc: Services) -> tuple[int, dict[str, Any]]:
    out = await readiness(svc.redis, svc.store.keys)
    if isinstance(out, dict):
        return 200, out
    return out.status_code, json.loads(bytes(out.body))


async def test_401_on_polls_pauses_and_resumes_when_the_key_works(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    from tests.fakeclock import running_job

    job = await running_job(svc, clock)
    waiting = await queued_job(svc, clock)
    upstream.answers["get"] = [
        error(401),
        error(401),
        interaction(job.id, "in_progress"),
        interaction(job.id, "completed", outputs=[]),
    ]
    upstream.answers["create"] = [created()]
    engine, dispatcher = PollEngine(svc, clock), Dispatcher(svc, clock)
    waiting_in_lane = await lane_length(svc)  # the running job's own entry too (dropped later)
    for n in (1, 2):
        await turn(engine)
        stored = await reread(svc, job.id)
        assert stored.status == JobStatus.running and stored.poll_errors == n
        assert await svc.budgets.key_unhealthy() > 0
        code, body = await ready(svc)
        assert code == 200 and body["upstream_key"] == "refused"  # intake stays in service
        await metrics.refresh_pause_gauges(svc.redis, svc.store.keys)
        assert metrics.UPSTREAM_KEY_HEALTHY._value.get() == 0
        await dispatcher.pass_once()  # no creates while the key is refused
        assert await lane_length(svc) == waiting_in_lane
        clock.advance(700)
    await turn(engine)  # the key works again: the flag is cleared by the success
    assert (await reread(svc, job.id)).poll_errors == 0
    assert await svc.budgets.key_unhealthy() == 0
    assert (await ready(svc))[0] == 200
    await metrics.refresh_pause_gauges(svc.redis, svc.store.keys)
    assert metrics.UPSTREAM_KEY_HEALTHY._value.get() == 1
    await dispatcher.pass_once()
    assert await lane_length(svc) == 0
    clock.advance(700)
    await turn(engine)
    assert (await reread(svc, job.id)).status == JobStatus.completed
    await submit({"svc": svc, "clock": clock}, waiting.id)
    assert (await reread(svc, waiting.id)).status == JobStatus.running
    assert upstream.ops.count("create") == 1


async def test_a_refused_key_pauses_creates_and_a_success_resumes_them(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    await svc.budgets.key_ok()  # the key worked a moment ago
    job = await queued_job(svc, clock)
    upstream.answers["create"] = [error(403), created()]
    await submit_defers(svc, clock, job.id)
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.queued and stored.submit_attempts == 0
    assert await svc.budgets.key_unhealthy() > 0
    await submit_defers(svc, clock, job.id)  # still refused: not even sent
    assert upstream.ops.count("create") == 1
    await svc.budgets.key_ok()  # any call that succeeds (a poll, another worker's)
    await submit({"svc": svc, "clock": clock}, job.id)
    assert (await reread(svc, job.id)).status == JobStatus.running


async def test_a_key_that_never_worked_fails_the_create_at_once(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await queued_job(svc, clock)
    upstream.answers["create"] = [error(403)]
    await submit({"svc": svc, "clock": clock}, job.id)
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.failed and stored.error is not None
    assert stored.error["code"] == "upstream_rejected" and stored.error["status"] == 403
    assert await svc.budgets.key_unhealthy() > 0  # and the rest wait


# --------------------------------------------------------------------------- 409


async def test_409_on_a_create_and_a_poll_is_retried(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await queued_job(svc, clock)
    upstream.answers["create"] = [error(409), created()]
    upstream.answers["get"] = [error(409), interaction(job.id, "completed", outputs=[])]
    await submit_defers(svc, clock, job.id)
    assert (await reread(svc, job.id)).submit_attempts == 1
    await submit({"svc": svc, "clock": clock}, job.id)
    engine = PollEngine(svc, clock)
    clock.advance(10)
    await turn(engine)
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.running and stored.poll_errors == 1
    clock.advance(700)
    await turn(engine)
    assert (await reread(svc, job.id)).status == JobStatus.completed
