"""Per-tenant limits (``INTERQ_TENANT_LIMITS``) on a fake clock against a real
Redis, the upstream an ``httpx.MockTransport`` (``tests/fakeclock.py``):

- a tenant at its in-flight cap waits while another tenant's jobs go: its
  jobs dispatched and not started, and its running ones, count; one ending or
  pausing in ``requires_action`` makes room;
- creates per minute: the dispatcher sends no more of a tenant's jobs than
  its window holds; a follow-up create of a running job (a continuation hop,
  on the simulator) takes a hit right before it is sent and waits while the
  window is full, its first create counted once (at dispatch); a tenant
  without the limit is not held back;
- a tenant whose day reaches its tokens_per_day: 429 ``tenant_daily_tokens``
  (Retry-After at the day's turn) on new jobs and batches, its queued jobs
  stay queued (not dispatched; a submit already dispatched waits), its
  running batch shows ``paused``; ``interq tenant resume`` lifts it for the
  day, and the day's turn ends it by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import Retry
from limits import RateLimitItemPerSecond
from typer.testing import CliRunner

from jobs.cli.main import app as cli
from jobs.domain import lifecycle, tenants
from jobs.domain.lifecycle import new_job
from jobs.domain.statuses import JobStatus
from jobs.services import Services
from jobs.settings import ModelLimit, Settings, TenantLimit, get_settings
from jobs.upstream.client import daily_reset
from jobs.work.dispatch import Dispatcher, lane_of
from jobs.work.poller import poll_job
from jobs.work.steps import submit
from jobs.work.tenant_gate import WINDOW, TenantGate, take_follow_up, window
from tests.fakeclock import FakeClock, Upstream, clocked_services, reread
from tests.helpers import SimServer, app_client

MODEL = "sim-model"


def usage(inp: int, out: int, thought: int = 0) -> dict[str, int]:
    return {"total_input_tokens": inp, "total_output_tokens": out, "total_thought_tokens": thought}


async def queued(svc: Services, clock: FakeClock, tenant: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        job = new_job(svc.settings, tenant, {"model": MODEL, "input": f"{i}"}, now=clock.time())
        ok, _ = await svc.store.create_job(job, lane=lane_of(tenant, None))
        assert ok
        ids.append(job.id)
    return ids


async def waiting(svc: Services, tenant: str, batch_id: str | None = None) -> int:
    """Jobs of the lane still waiting for dispatch."""
    return int(await svc.redis.llen(svc.store.keys.ready(lane_of(tenant, batch_id))))  # type: ignore[misc]


async def start(svc: Services, jid: str, clock: FakeClock) -> None:
    job = await reread(svc, jid)
    fields: Any = {"interaction_id": "int_1", "interaction_ids": ["int_1"]}
    assert (await svc.store.start(job, fields, poll_at=clock.time() + 60)).ok


async def complete(svc: Services, jid: str, used: dict[str, int]) -> None:
    job = await reread(svc, jid)
    inter = {"id": "int_1", "status": "completed", "usage": used}
    assert await lifecycle.finish(svc, job, JobStatus.completed, interaction=inter)


# --------------------------------------------------------------------------- in flight


@pytest.fixture()
async def capped(clean_redis: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Services]:
    limits = {"team-a": TenantLimit(in_flight=2)}
    async with clocked_services(clean_redis, tmp_path, upstream, tenant_limits=limits) as s:
        yield s


async def test_a_tenant_at_its_in_flight_cap_waits_while_another_tenants_jobs_run(
    capped: Services, clock: FakeClock
) -> None:
    svc = capped
    a = await queued(svc, clock, "team-a", 5)
    b = await queued(svc, clock, "team-b", 5)
    d = Dispatcher(svc, clock)
    await d.pass_once()
    assert await waiting(svc, "team-a") == 3  # two went: its cap
    assert await waiting(svc, "team-b") == 0  # no cap: all of them
    # dispatched but not started yet: still in flight, nothing more goes
    await d.pass_once()
    assert await waiting(svc, "team-a") == 3
    for jid in [*a[:2], *b]:
        await start(svc, jid, clock)
    more_b = await queued(svc, clock, "team-b", 4)
    await d.pass_once()
    assert await waiting(svc, "team-a") == 3  # running counts: it waits
    assert await waiting(svc, "team-b") == 0  # the other tenant goes on
    assert [(await reread(svc, j)).status for j in more_b] == [JobStatus.queued] * 4
    assert await tenants.in_flight(svc, "team-a") == 2

    await complete(svc, a[0], usage(1, 1))  # one ends: room for one
    await d.pass_once()
    assert await waiting(svc, "team-a") == 2

    # one waiting for function results holds nothing upstream: room for one
    job = await reread(svc, a[1])
    call = {"type": "function_call", "id": "c1", "name": "f", "arguments": {}}
    paused = {"id": "int_1", "status": "requires_action", "steps": [call]}
    assert await lifecycle.pause(svc, job, paused)
    await d.pass_once()
    assert await waiting(svc, "team-a") == 1
    assert await tenants.in_flight(svc, "team-a") == 2  # a[2], a[3]: dispatched


async def test_creates_per_minute_bound_what_the_dispatcher_sends(
    clean_redis: str, tmp_path: Path, upstream: Upstream, clock: FakeClock
) -> None:
    limits = {"*": TenantLimit(creates_per_minute=3)}
    async with clocked_services(clean_redis, tmp_path, upstream, tenant_limits=limits) as svc:
        await queued(svc, clock, "team-a", 5)
        await queued(svc, clock, "team-b", 2)
        d = Dispatcher(svc, clock)
        await d.pass_once()
        await d.pass_once()  # the same minute: the window is spent
        assert await waiting(svc, "team-a") == 2
        assert await waiting(svc, "team-b") == 0


# --------------------------------------------------------------------------- follow-ups

HOP = "go on [sim duration=0 outcome=requires_continuation]"  # a continuation hop at once


@pytest.fixture()
async def hopping(settings: Settings) -> AsyncIterator[Services]:
    """Services on the simulator: team-a may send 3 creates a minute, team-b
    any number; the model has a window of its own."""
    limits = {"team-a": TenantLimit(creates_per_minute=3)}
    cfg = settings.model_copy(
        update={"tenant_limits": limits, "limits": {MODEL: ModelLimit(rpm=1000)}}
    )
    svc = Services.open(cfg)
    try:
        yield svc
    finally:
        await svc.close()


async def hop_jobs(svc: Services, clock: FakeClock, tenant: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        job = new_job(svc.settings, tenant, {"model": MODEL, "input": HOP}, now=clock.time())
        assert (await svc.store.create_job(job, lane=lane_of(tenant, None)))[0]
        ids.append(job.id)
    return ids


async def sent_and_continued(svc: Services, jid: str) -> None:
    """The job's (dispatched) first create sent, and its poll finding
    ``requires_continuation``: running, its follow-up create pending."""
    await submit({"svc": svc}, jid)
    await poll_job(svc, await reread(svc, jid))
    job = await reread(svc, jid)
    assert job.status == JobStatus.running and job.pending_create
    assert len(job.interaction_ids) == 1


async def room(svc: Services, tenant: str) -> int:
    item = window(svc, tenant)
    assert item is not None
    return (await svc.budgets.limiter.get_window_stats(item, WINDOW, tenant)).remaining


async def model_room(svc: Services) -> int:
    item = RateLimitItemPerSecond(1000, svc.settings.rate_window_s)
    return (await svc.budgets.limiter.get_window_stats(item, MODEL)).remaining


async def a_minute_later(svc: Services, tenant: str, taken: int) -> None:
    """The window's hits age out (the ``limits`` window is on real time: it
    is emptied rather than waited for), then ``taken`` new creates count."""
    item = window(svc, tenant)
    assert item is not None
    await svc.budgets.limiter.clear(item, WINDOW, tenant)
    await svc.budgets.limiter.hit(item, WINDOW, tenant, cost=taken)


async def test_a_follow_up_create_waits_for_room_in_its_tenants_creates_per_minute(
    hopping: Services, sim: SimServer, clock: FakeClock
) -> None:
    svc, ctx = hopping, {"svc": hopping}
    a1, a2 = await hop_jobs(svc, clock, "team-a", 2)
    d = Dispatcher(svc, clock)
    await d.pass_once()
    await sent_and_continued(svc, a1)
    await sent_and_continued(svc, a2)
    assert await room(svc, "team-a") == 1  # the first creates counted once, at dispatch
    [a3] = await hop_jobs(svc, clock, "team-a", 1)
    await d.pass_once()
    assert await room(svc, "team-a") == 0  # spent by dispatched creates
    await submit(ctx, a3)  # dispatched: counted already, it goes
    assert (await reread(svc, a3)).status == JobStatus.running

    sent, tokens = len(sim.state.created), await model_room(svc)
    before = await reread(svc, a1)
    with pytest.raises(Retry) as deferred:
        await submit(ctx, a1)
    assert deferred.value.defer_score > 0
    assert len(sim.state.created) == sent  # not sent
    assert await model_room(svc) == tokens  # and no model token taken
    after = await reread(svc, a1)
    assert after.status == JobStatus.running and after.pending_create == before.pending_create
    assert after.interaction_ids == before.interaction_ids and not after.create_inflight

    await a_minute_later(svc, "team-a", taken=2)  # room for one more
    await submit(ctx, a1)
    assert len(sim.state.created) == sent + 1
    job = await reread(svc, a1)
    assert not job.pending_create and len(job.interaction_ids) == 2
    assert await room(svc, "team-a") == 0  # the follow-up took it
    with pytest.raises(Retry):
        await submit(ctx, a2)
    assert len(sim.state.created) == sent + 1
    assert (await reread(svc, a2)).pending_create


async def test_a_follow_up_of_a_tenant_without_the_limit_goes_at_once(
    hopping: Services, sim: SimServer, clock: FakeClock
) -> None:
    svc = hopping
    await hop_jobs(svc, clock, "team-a", 3)
    [b] = await hop_jobs(svc, clock, "team-b", 1)
    await Dispatcher(svc, clock).pass_once()
    assert await room(svc, "team-a") == 0  # team-a's window is full
    await sent_and_continued(svc, b)
    sent = len(sim.state.created)
    await submit({"svc": svc}, b)  # no Retry
    assert len(sim.state.created) == sent + 1
    assert len((await reread(svc, b)).interaction_ids) == 2
    windows = [k async for k in svc.redis.scan_iter(match=f"*{WINDOW}/*")]
    assert windows and not [k for k in windows if b"/team-b/" in k]  # team-a's only


async def test_a_pass_whose_room_a_follow_up_took_meanwhile_fills_the_window(
    hopping: Services,
) -> None:
    svc = hopping
    gate = TenantGate(svc, FakeClock())
    gate.new_pass()
    assert await gate.allowance("team-a") == (3, 0.0)
    assert await take_follow_up(svc, "team-a") == 0.0  # a follow-up, after the pass read
    await gate.moved("team-a", 3)  # the pass's three went anyway
    assert await room(svc, "team-a") == 0  # counted as far as they fit
    assert await take_follow_up(svc, "team-a") > 0


# --------------------------------------------------------------------------- tokens per day


@pytest.fixture()
async def daily(clean_redis: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Services]:
    limits = {"*": TenantLimit(tokens_per_day=100)}
    upstream.answers["create"] = [
        httpx.Response(200, json={"id": "int_1", "status": "in_progress"})
    ]
    async with clocked_services(clean_redis, tmp_path, upstream, tenant_limits=limits) as s:
        yield s


BATCH = {
    "jobs": [
        {"custom_id": f"c{i}", "interaction": {"model": MODEL, "input": "x"}} for i in range(3)
    ]
}
JOB = {"interaction": {"model": MODEL, "input": "hi"}}


async def interq(*args: str) -> str:
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def test_a_tenant_over_its_daily_tokens_gets_429_and_its_batch_pauses(
    daily: Services, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = daily
    async with app_client(svc.settings) as api:
        r = await api.post("/v1/batches", json=BATCH)
        assert r.status_code == 202, r.text
        bid = r.json()["id"]
        first = r.json()
        r = await api.post("/v1/jobs", json=JOB)
        jid = r.json()["id"]
        await submit({"svc": svc, "clock": clock}, jid)  # sent upstream: running
        await complete(svc, jid, usage(60, 40, 10))  # 110 tokens: over the day's 100
        end = daily_reset(clock.time())

        reruns = ((f"/v1/jobs/{jid}/rerun", None), (f"/v1/batches/{bid}/rerun", None))
        for path, body in (("/v1/jobs", JOB), ("/v1/batches", BATCH), *reruns):
            r = await api.post(path, json=body)  # a rerun is new work too
            assert r.status_code == 429, r.text
            err = r.json()["error"]
            assert err["code"] == "tenant_daily_tokens" and err["retry_at"] == end
            assert err["tokens_per_day"] == 100 and "tokens for today" in err["message"]
            assert int(r.headers["retry-after"]) >= 1

        b = (await api.get(f"/v1/batches/{bid}")).json()
        assert first["status"] == "in_progress"
        assert b["status"] == "paused" and b["pause_error"]["code"] == "tenant_daily_tokens"
        assert b["counts"]["queued"] == 3

        d = Dispatcher(svc, clock)
        await d.pass_once()
        assert await waiting(svc, "default", bid) == 3  # held: not dispatched
        ids = [j["id"] for j in (await api.get(f"/v1/jobs?batch_id={bid}")).json()["data"]]
        with pytest.raises(Retry):  # a submit dispatched before the hold waits
            await submit({"svc": svc, "clock": clock}, ids[0])
        assert (await reread(svc, ids[0])).status == JobStatus.queued
        hold = svc.store.keys.tenant_hold("default")
        assert await svc.redis.pexpiretime(hold) == int(end * 1000)  # gone at the turn

        monkeypatch.setenv("INTERQ_REDIS_URL", svc.settings.redis_url or "")
        monkeypatch.setenv("INTERQ_KEY_PREFIX", svc.settings.key_prefix)
        monkeypatch.setenv("INTERQ_TENANT_LIMITS", '{"*": {"tokens_per_day": 100}}')
        get_settings.cache_clear()
        try:
            assert "default: held until" in await interq("tenant", "status")
            day = await interq("tenant", "status", "default")
            assert '"tokens": 110' in day and '"held_until": ' in day
            assert "hold lifted" in await interq("tenant", "resume", "default")
            assert "not held" in await interq("tenant", "resume", "default")
        finally:
            get_settings.cache_clear()

        assert (await api.get(f"/v1/batches/{bid}")).json()["status"] == "in_progress"
        assert (await api.post("/v1/jobs", json=JOB)).status_code == 202
        await d.pass_once()
        assert await waiting(svc, "default", bid) == 0  # dispatched again
        await submit({"svc": svc, "clock": clock}, ids[0])
        assert (await reread(svc, ids[0])).status == JobStatus.running
        await complete(svc, ids[0], usage(500, 0))  # lifted for the day: no new hold
        assert await tenants.held_until(svc, "default", clock.time()) == 0.0


async def test_the_days_turn_ends_the_hold_and_starts_a_new_count(
    daily: Services, clock: FakeClock
) -> None:
    svc = daily
    a = await queued(svc, clock, "team-a", 3)
    await submit({"svc": svc, "clock": clock}, a[0])
    await complete(svc, a[0], usage(100, 0))  # exactly the limit: held
    end = daily_reset(clock.time())
    assert await tenants.held_until(svc, "team-a", clock.time()) == end
    d = Dispatcher(svc, clock)
    await d.pass_once()
    assert await waiting(svc, "team-a") == 3  # untouched (a[0], sent directly, still in it)

    clock.advance(end - clock.time() + 1)  # past midnight Pacific
    await d.pass_once()
    assert await waiting(svc, "team-a") == 0
    await submit({"svc": svc, "clock": clock}, a[1])
    assert (await reread(svc, a[1])).status == JobStatus.running
    # the new day counts from zero: 10 tokens, well within the limit
    await tenants.record_usage(svc, await reread(svc, a[1]), usage(7, 3), now=clock.time())
    day = await tenants.today(svc, "team-a", clock.time())
    assert day["day"] == tenants.day_of(end + 1) and day["tokens"] == 10
    assert day["held_until"] is None
