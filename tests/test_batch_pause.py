"""A batch whose first jobs are all refused upstream with the same 400 pauses
instead of sending (and failing) the rest; cancel and resume work on it."""

from __future__ import annotations

import json
from typing import Any

import httpx

from jobs.settings import Settings
from tests.helpers import SimServer, running_worker, wait_until

NDJSON = {"content-type": "application/x-ndjson"}
REFUSED = "[sim outcome=bogus]"  # the simulator: 400 "bad sim directive entry 'outcome=bogus'"


def refused_batch(n: int) -> bytes:
    rows = [
        {"custom_id": f"c-{i}", "interaction": {"model": "sim-model", "input": f"{i} {REFUSED}"}}
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


async def batch(api: httpx.AsyncClient, bid: str) -> dict[str, Any]:
    return dict((await api.get(f"/v1/batches/{bid}")).json())


async def paused(api: httpx.AsyncClient, bid: str) -> dict[str, Any] | None:
    b = await batch(api, bid)
    return b if b["status"] == "paused" else None


async def test_a_refused_batch_of_1000_pauses_after_its_first_failures_then_cancels(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer
) -> None:
    r = await api.post("/v1/batches", content=refused_batch(1000), headers=NDJSON)
    assert r.status_code == 202, r.text
    bid = r.json()["id"]
    async with running_worker(settings):
        b = await wait_until(lambda: paused(api, bid), timeout=120, what="paused")
        assert b["pause_error"]["code"] == "upstream_rejected"
        assert "outcome=bogus" in b["pause_error"]["message"]
        assert b["counts"]["failed"] >= settings.batch_pause_after
        assert b["counts"]["queued"] > 750  # held, not sent

        r = await api.post(f"/v1/batches/{bid}/cancel")
        assert r.status_code == 202, r.text
        done = await wait_until(
            lambda: _ended(api, bid), timeout=120, what="the cancelled batch to end"
        )
    assert done["status"] == "cancelled"
    assert done["counts"]["cancelled"] > 750
    # only the jobs already handed to the workers when it paused (at most the
    # model's concurrency; a few of them cancelled while their create was out)
    # reached upstream: the held ones never did
    assert done["counts"]["failed"] <= sim.state.stats()["creates"] < 250


async def _ended(api: httpx.AsyncClient, bid: str) -> dict[str, Any] | None:
    b = await batch(api, bid)
    return b if b["status"] in ("completed", "cancelled") else None


async def test_a_resumed_batch_sends_the_rest_and_does_not_pause_again(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    r = await api.post("/v1/batches", content=refused_batch(30), headers=NDJSON)
    bid = r.json()["id"]
    assert (await api.post(f"/v1/batches/{bid}/resume")).status_code == 409  # not paused
    few = settings.model_copy(update={"batch_pause_after": 3})
    async with running_worker(few, max_jobs=2):
        await wait_until(lambda: paused(api, bid), timeout=60, what="paused")
        r = await api.post(f"/v1/batches/{bid}/resume")
        assert r.status_code == 202 and r.json()["status"] == "in_progress", r.text
        done = await wait_until(lambda: _ended(api, bid), timeout=120, what="the batch to end")
    assert done["status"] == "completed" and done["counts"]["failed"] == 30


async def test_a_batch_whose_first_jobs_fail_differently_does_not_pause(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    bad = [f"[sim outcome=x{i}]" for i in range(8)]  # eight different 400s
    rows = [
        {"custom_id": f"c-{i}", "interaction": {"model": "sim-model", "input": text}}
        for i, text in enumerate(bad)
    ]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    bid = (await api.post("/v1/batches", content=body, headers=NDJSON)).json()["id"]
    async with running_worker(settings.model_copy(update={"batch_pause_after": 3})):
        done = await wait_until(lambda: _ended(api, bid), timeout=120, what="the batch to end")
    assert done["status"] == "completed" and done["counts"]["failed"] == 8


async def test_wait_batch_returns_at_a_pause_which_is_not_an_end(settings: Settings) -> None:
    from api import create_app
    from jobs.client import AsyncClient, batch_finished, batch_settled

    app = create_app(settings)
    few = settings.model_copy(update={"batch_pause_after": 3})
    rows = [json.loads(line) for line in refused_batch(30).splitlines()]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://interq", transport=transport) as c:
            bid = (await c.submit_batch(iter(rows)))["id"]
            async with running_worker(few, max_jobs=2):
                view = await c.wait_batch(bid, timeout=60)  # ?wait= long polls
                assert view["status"] == "paused", view
                assert batch_settled(view) and not batch_finished(view)
                await c.cancel_batch(bid)
                final = await c.wait_batch(bid, timeout=60)
    assert final["status"] == "cancelled" and batch_finished(final)
