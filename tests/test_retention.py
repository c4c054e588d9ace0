"""Retention: finished jobs (a batch with its last job) are deleted
``retention_s`` after they end, everything of theirs with them, and at once on
DELETE. The sweeper is driven with ``now=`` here; one test runs the real loop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from jobs.delivery.signing import generate_secret
from jobs.domain.records import EventState
from jobs.services import Services
from jobs.settings import ModelLimit, Settings, hash_api_key
from jobs.storage.keys import Keys
from jobs.work import retention
from tests.helpers import (
    Receiver,
    SimServer,
    job_body,
    running_worker,
    wait_terminal,
    wait_until,
)

RETENTION_S = 5.0
SECRET = generate_secret()


@pytest.fixture()
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"retention_s": RETENTION_S})


@pytest.fixture()
def receiver(receiver: Receiver) -> Receiver:
    receiver.secret = SECRET
    return receiver


def hooked(text: str, receiver: Receiver) -> dict[str, Any]:
    return {**job_body(text), "webhook": {"url": receiver.url, "secret": SECRET}}


@pytest.fixture()
async def svc(settings: Settings) -> AsyncIterator[Services]:
    s = Services.open(settings)
    yield s
    await s.close()


@pytest.fixture()
async def quiet_worker(settings: Settings) -> AsyncIterator[None]:
    """A worker whose own sweeper is off: these tests move the clock themselves."""
    async with running_worker(settings, _sweeper=False):
        yield


def results_files(settings: Settings) -> list[Path]:
    root = Path(settings.results_url.removeprefix("file://"))
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def dbsize(svc: Services) -> int:
    return int(await svc.redis.dbsize())


def later() -> float:
    """A clock past every job that has ended so far (each is due ``retention_s``
    after its terminal transition)."""
    return time.time() + RETENTION_S + 0.1


async def delivered(api: httpx.AsyncClient, job_id: str) -> bool:
    events = (await api.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]
    return bool(events) and all(e["state"] in ("delivered", "no_endpoint") for e in events)


async def run_jobs(api: httpx.AsyncClient, bodies: list[dict[str, Any]], **kw: Any) -> list[str]:
    ids = []
    for body in bodies:
        r = await api.post("/v1/jobs", json=body, **kw)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    await wait_terminal(api, ids)
    for jid in ids:
        await wait_until(lambda j=jid: delivered(api, j), what=f"{jid} delivered")
    return ids


async def baseline(api: httpx.AsyncClient, svc: Services, receiver: Receiver) -> int:
    """DBSIZE once one job has gone through and been swept (global keys such as
    ``{p}:seq`` and ``{p}:counts`` are created once, by the first job)."""
    await run_jobs(api, [hooked("warm-up", receiver)])
    await retention.sweep_once(svc, now=later())
    return await dbsize(svc)


async def codes(api: httpx.AsyncClient, ids: list[str]) -> set[int]:
    return {(await api.get(f"/v1/jobs/{j}")).status_code for j in ids}


async def gauges(api: httpx.AsyncClient) -> list[str]:
    text = (await api.get("/metrics")).text
    names = ("interq_jobs_by_status", "interq_queue_depth", "interq_jobs_in_flight")
    return sorted(ln for ln in text.splitlines() if ln.startswith(names))


async def test_finished_jobs_go_after_retention(
    api: httpx.AsyncClient, quiet_worker: None, svc: Services, receiver: Receiver
) -> None:
    base = await baseline(api, svc, receiver)
    before = await gauges(api)
    ids = await run_jobs(
        api,
        [
            hooked("text", receiver),
            hooked("picture [sim output=image]", receiver),
            job_body("no hook [sim outcome=failed]"),
        ],
    )
    ids += await run_jobs(api, [job_body("idem")], headers={"Idempotency-Key": "k-1"})
    assert await dbsize(svc) > base
    assert any("files" in p.parts for p in results_files(svc.settings))  # the image
    ended = [float((await api.get(f"/v1/jobs/{j}")).json()["finished_at"]) for j in ids]

    assert await retention.sweep_once(svc, now=min(ended) + RETENTION_S - 0.1) > 0
    assert await codes(api, ids) == {200}

    await retention.sweep_once(svc, now=later())
    assert await dbsize(svc) == base
    for jid in ids:
        assert (await api.get(f"/v1/jobs/{jid}")).status_code == 404
        assert (await api.get(f"/v1/jobs/{jid}/result")).status_code == 404
    assert results_files(svc.settings) == []
    assert await gauges(api) == before
    # the Idempotency-Key went with its job: the same key makes a new job
    r = await api.post("/v1/jobs", json=job_body("idem"), headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 202 and r.json()["id"] != ids[-1]


async def test_batch_goes_with_its_last_job(
    api: httpx.AsyncClient, quiet_worker: None, svc: Services, receiver: Receiver
) -> None:
    base = await baseline(api, svc, receiver)
    lines = [
        {"custom_id": f"c{i}", "interaction": job_body(f"b{i}")["interaction"]} for i in range(3)
    ]
    r = await api.post(
        "/v1/batches", json={"jobs": lines, "webhook": {"url": receiver.url, "secret": SECRET}}
    )
    bid = r.json()["id"]

    async def done() -> bool:
        return bool((await api.get(f"/v1/batches/{bid}")).json()["status"] == "completed")

    await wait_until(done, what="batch completed")
    await wait_until(lambda: any(d.body["type"] == "batch.completed" for d in receiver.snapshot()))
    page = (await api.get("/v1/jobs", params={"batch_id": bid})).json()["data"]
    keys = svc.store.keys
    assert await svc.redis.zscore(keys.expiring_batches, bid) is not None
    assert await svc.redis.zcard(keys.expiring_jobs) == 0  # batch jobs live with the batch

    await retention.sweep_once(svc, now=later())
    assert (await api.get(f"/v1/batches/{bid}")).status_code == 404
    assert await codes(api, [j["id"] for j in page]) == {404}
    assert await dbsize(svc) == base
    assert results_files(svc.settings) == []


async def wait_status(api: httpx.AsyncClient, job_id: str, status: str) -> None:
    async def check() -> bool:
        return bool((await api.get(f"/v1/jobs/{job_id}")).json()["status"] == status)

    await wait_until(check, what=f"{job_id} {status}")


async def test_delete_queued_running_paused_and_finished_jobs(
    api: httpx.AsyncClient, settings: Settings, svc: Services, sim: SimServer, receiver: Receiver
) -> None:
    async with running_worker(settings, _sweeper=False):
        base = await baseline(api, svc, receiver)
    one_at_a_time = settings.model_copy(update={"limits": {"sim-model": ModelLimit(concurrency=1)}})
    async with running_worker(one_at_a_time, _sweeper=False):
        running = (await api.post("/v1/jobs", json=job_body("long [sim duration=60]"))).json()["id"]
        await wait_status(api, running, "running")
        queued = (await api.post("/v1/jobs", json=job_body("behind it"))).json()["id"]
        assert (await api.get(f"/v1/jobs/{queued}")).json()["status"] == "queued"

        assert (await api.delete(f"/v1/jobs/{queued}")).status_code == 204
        assert (await api.get(f"/v1/jobs/{queued}")).status_code == 404
        assert (await api.delete(f"/v1/jobs/{running}")).status_code == 204
        assert (await api.get(f"/v1/jobs/{running}")).status_code == 404
        cancels = [r for r in sim.state.requests if r["op"] == "cancel"]
        assert [r["job"] for r in cancels] == [running]  # cancelled upstream first

        body = job_body("tool? [sim duration=0.1 outcome=requires_action]")
        paused = (await api.post("/v1/jobs", json=body)).json()["id"]
        await wait_status(api, paused, "requires_action")
        assert (await api.delete(f"/v1/jobs/{paused}")).status_code == 204

        (finished,) = await run_jobs(api, [job_body("done [sim output=image]")])
        assert results_files(svc.settings)
        assert (await api.delete(f"/v1/jobs/{finished}")).status_code == 204
        assert (await api.get(f"/v1/jobs/{finished}")).status_code == 404
        assert (await api.delete(f"/v1/jobs/{finished}")).status_code == 404
        assert results_files(svc.settings) == []

        # the dispatcher has dropped the deleted queued job from its lane
        async def no_lanes() -> bool:
            return await svc.redis.exists(svc.store.keys.lanes) == 0

        await wait_until(no_lanes, what="the lane emptied")
        # a second sweep of the deleted ones (late writes of steps) leaves nothing either
        await retention.sweep_once(svc, now=time.time() + retention.recheck_s(svc) + 1)
        assert await dbsize(svc) == base


async def test_delete_batch_cancels_and_removes_all(
    api: httpx.AsyncClient, settings: Settings, svc: Services, sim: SimServer, receiver: Receiver
) -> None:
    async with running_worker(settings, _sweeper=False):
        base = await baseline(api, svc, receiver)
    one_at_a_time = settings.model_copy(update={"limits": {"sim-model": ModelLimit(concurrency=1)}})
    async with running_worker(one_at_a_time, _sweeper=False):
        lines = [
            {
                "custom_id": f"c{i}",
                "interaction": job_body(f"b{i} [sim duration=60]")["interaction"],
            }
            for i in range(4)
        ]
        bid = (await api.post("/v1/batches", json={"jobs": lines})).json()["id"]
        page = (await api.get("/v1/jobs", params={"batch_id": bid})).json()["data"]
        await wait_status(api, page[0]["id"], "running")

        r = await api.delete(f"/v1/jobs/{page[0]['id']}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_in_batch"

        assert (await api.delete(f"/v1/batches/{bid}")).status_code == 204
        assert (await api.get(f"/v1/batches/{bid}")).status_code == 404
        assert await codes(api, [j["id"] for j in page]) == {404}
        assert [r["job"] for r in sim.state.requests if r["op"] == "cancel"] == [page[0]["id"]]
        assert (await api.delete(f"/v1/batches/{bid}")).status_code == 404

        await retention.sweep_once(svc, now=time.time() + retention.recheck_s(svc) + 1)
        assert await dbsize(svc) == base


async def test_another_tenants_delete_is_404(settings: Settings) -> None:
    from api import create_app

    keys = {"a": hash_api_key("key-a"), "b": hash_api_key("key-b")}
    app = create_app(settings.model_copy(update={"api_keys": keys}))
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as api:
            jid = (await api.post("/v1/jobs", json=job_body("mine"), headers=a)).json()["id"]
            batch = {"jobs": [{"custom_id": "x", "interaction": job_body("m")["interaction"]}]}
            bid = (await api.post("/v1/batches", json=batch, headers=a)).json()["id"]
            assert (await api.delete(f"/v1/jobs/{jid}", headers=b)).status_code == 404
            assert (await api.delete(f"/v1/batches/{bid}", headers=b)).status_code == 404
            assert (await api.get(f"/v1/jobs/{jid}", headers=a)).status_code == 200
            assert (await api.get(f"/v1/batches/{bid}", headers=a)).status_code == 200
            assert (await api.delete(f"/v1/jobs/{jid}", headers=a)).status_code == 204


async def test_a_crashed_sweep_is_finished_by_the_next(
    api: httpx.AsyncClient, quiet_worker: None, svc: Services, receiver: Receiver
) -> None:
    base = await baseline(api, svc, receiver)
    (jid,) = await run_jobs(api, [hooked("x [sim output=image]", receiver)])
    t = later()
    key = svc.store.keys.expiring_jobs
    # a sweeper claimed it, deleted its files and died before the Redis script
    assert await retention.claim(svc, key, int(t * 1000), 10) == [jid]
    await retention.delete_files(svc, [jid])
    assert await retention.sweep_once(svc, now=t) > 0  # claimed: not due for others yet
    assert (await api.get(f"/v1/jobs/{jid}")).status_code == 200
    await retention.sweep_once(svc, now=t + retention.LEASE_S + 1)
    assert (await api.get(f"/v1/jobs/{jid}")).status_code == 404
    assert await dbsize(svc) == base


async def test_late_writes_do_not_bring_a_purged_job_back(
    api: httpx.AsyncClient, quiet_worker: None, svc: Services, receiver: Receiver
) -> None:
    base = await baseline(api, svc, receiver)
    (jid,) = await run_jobs(api, [hooked("x", receiver)])
    (event_id,) = await svc.store.job_event_ids(jid)
    assert await retention.purge_job(svc, jid)
    # what a poll or a delivery still running would write afterwards
    await svc.store.set_fields(jid, {"upstream_status": "completed"}, incr={"poll_count": 1})
    await svc.store.update_event(event_id, {"state": EventState.dead}, dead_for="default")
    await svc.store.log_attempt(event_id, {"attempt": 2})
    assert not await retention.purge_job(svc, jid)  # again: nothing left, no error
    assert await dbsize(svc) == base


async def test_the_workers_sweeper_removes_expired_jobs(
    api: httpx.AsyncClient, worker: None, settings: Settings
) -> None:
    (jid,) = await run_jobs(api, [job_body("soon gone [sim output=image]")])
    assert results_files(settings)
    r = aioredis.Redis.from_url(settings.effective_redis_url)
    try:

        async def gone() -> bool:
            return (await api.get(f"/v1/jobs/{jid}")).status_code == 404

        await wait_until(gone, timeout=RETENTION_S + 30, interval=0.2, what="the sweeper")
        assert not await r.exists(Keys(settings.key_prefix).job(jid))
        assert results_files(settings) == []
    finally:
        await r.aclose()
