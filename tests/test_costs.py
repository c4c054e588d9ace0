"""Estimated costs from the price table (``INTERQ_PRICES``), against a real
Redis: each job's ``estimated_cost_usd`` (its view, its end event's data), a
job of two interactions priced on both, the batch's running and final totals
(view and ``batch.completed``), the tenant's day, and
``interq_cost_usd_total{tenant,model}`` all match the table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobs.domain import batches, lifecycle, tenants
from jobs.domain.statuses import JobStatus
from jobs.observe import metrics
from jobs.services import Services
from jobs.settings import Price
from tests.fakeclock import FakeClock, Upstream, clocked_services, reread
from tests.helpers import app_client

MODEL = "sim-model"
PRICE = {"input": 0.5, "output": 3.0, "thought": 2.0}  # USD per million tokens


def usage(inp: int, out: int, thought: int = 0) -> dict[str, int]:
    return {"total_input_tokens": inp, "total_output_tokens": out, "total_thought_tokens": thought}


def priced(inp: int, out: int, thought: int = 0) -> float:
    """The table's price of these tokens, in USD."""
    return (inp * PRICE["input"] + out * PRICE["output"] + thought * PRICE["thought"]) / 1e6


@pytest.fixture()
async def svc(clean_redis: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Services]:
    prices = {MODEL: Price(**PRICE)}
    async with clocked_services(clean_redis, tmp_path, upstream, prices=prices) as s:
        yield s


async def run(svc: Services, clock: FakeClock, jid: str, hops: list[dict[str, int]]) -> None:
    """The job through its interactions: the first ones end in
    ``requires_action`` and are continued, the last one completes."""
    for n, used in enumerate(hops):
        job = await reread(svc, jid)
        iid = f"int_{n}"
        fields: Any = {"interaction_id": iid, "interaction_ids": [*job.interaction_ids, iid]}
        assert (await svc.store.start(job, fields, poll_at=clock.time() + 60)).ok
        job = await reread(svc, jid)
        inter: dict[str, Any] = {"id": iid, "status": "completed", "usage": used}
        if n == len(hops) - 1:
            assert await lifecycle.finish(svc, job, JobStatus.completed, interaction=inter)
            return
        call = {"type": "function_call", "id": "c1", "name": "f", "arguments": {}}
        inter |= {"status": "requires_action", "steps": [call]}
        assert await lifecycle.pause(svc, job, inter)
        job = await reread(svc, jid)
        follow = lifecycle.follow_up_body(job, inter, input="ok")
        assert await lifecycle.chain(svc, job, JobStatus.requires_action, follow)


async def event_data(svc: Services, jid: str) -> dict[str, Any]:
    job = await reread(svc, jid)
    event = await svc.store.get_event(job.event_id)
    assert event is not None
    data: dict[str, Any] = json.loads(event.body)["data"]
    return data


def cost_metric() -> float:
    return metrics.COST.labels(tenant="default", model=MODEL)._value.get()


async def test_costs_in_views_events_and_totals_match_the_price_table(
    svc: Services, clock: FakeClock
) -> None:
    hops = [[usage(1000, 200, 100)], [usage(2000, 0)], [usage(300, 50, 10), usage(700, 450, 40)]]
    body = {
        "jobs": [
            {"custom_id": f"c{i}", "interaction": {"model": MODEL, "input": "x"}}
            for i in range(len(hops))
        ]
    }
    before = cost_metric()
    async with app_client(svc.settings) as api:
        r = await api.post("/v1/batches", json=body)
        assert r.status_code == 202, r.text
        bid = r.json()["id"]
        assert r.json()["estimated_cost_usd"] == 0.0
        rows = (await api.get(f"/v1/jobs?batch_id={bid}")).json()["data"]
        assert [j["estimated_cost_usd"] for j in rows] == [None, None, None]
        for row, job_hops in zip(rows, hops, strict=True):
            await run(svc, clock, row["id"], job_hops)
        expected = [sum(priced(*u.values()) for u in job_hops) for job_hops in hops]
        for row, want in zip(rows, expected, strict=True):
            view = (await api.get(f"/v1/jobs/{row['id']}")).json()
            assert view["estimated_cost_usd"] == pytest.approx(want, abs=1e-12)
            data = await event_data(svc, row["id"])
            assert data["estimated_cost_usd"] == pytest.approx(want, abs=1e-12)
        # the two-interaction job: both hops priced (1000 in, 500 out, 50 thought)
        assert expected[2] == pytest.approx(priced(1000, 500, 50))
        running = (await api.get(f"/v1/batches/{bid}")).json()
        assert running["estimated_cost_usd"] == pytest.approx(sum(expected), abs=1e-12)

        await batches.batch_done({"svc": svc}, bid)
        final = (await api.get(f"/v1/batches/{bid}")).json()
        assert final["status"] == "completed"
        assert final["estimated_cost_usd"] == pytest.approx(sum(expected), abs=1e-12)
    batch = await svc.store.get_batch(bid)
    assert batch is not None and batch.event_id
    event = await svc.store.get_event(batch.event_id)
    assert event is not None
    done = json.loads(event.body)["data"]
    assert done["estimated_cost_usd"] == pytest.approx(sum(expected), abs=1e-12)

    day = await tenants.today(svc, "default", clock.time())
    assert day["estimated_cost_usd"] == pytest.approx(sum(expected), abs=1e-12)
    assert day["tokens"] == sum(sum(u.values()) for job_hops in hops for u in job_hops)
    assert cost_metric() - before == pytest.approx(sum(expected), abs=1e-9)


async def test_without_a_price_a_job_has_no_cost(
    clean_redis: str, tmp_path: Path, upstream: Upstream, clock: FakeClock
) -> None:
    prices = {"gemini-3-pro": Price(input=1.0, output=1.0)}  # not the job's model, no "*"
    async with clocked_services(clean_redis, tmp_path, upstream, prices=prices) as svc:
        async with app_client(svc.settings) as api:
            r = await api.post("/v1/jobs", json={"interaction": {"model": MODEL, "input": "x"}})
            jid = r.json()["id"]
            await run(svc, clock, jid, [usage(10, 10)])
            view = (await api.get(f"/v1/jobs/{jid}")).json()
        assert view["usage"]["total_input_tokens"] == 10 and view["estimated_cost_usd"] is None
        assert "estimated_cost_usd" not in await event_data(svc, jid)


def test_the_thought_price_defaults_to_the_output_price() -> None:
    from jobs.domain.costs import cost_nano
    from jobs.settings import Settings

    cfg = Settings(prices={"*": Price(input=0.25, output=1.5)})
    assert cost_nano(cfg, "any-model", usage(4000, 1000, 1000)) == 4_000_000  # $0.004
