"""The spine end to end: API -> worker -> simulator -> storage -> signed webhook."""

from __future__ import annotations

import httpx
import pytest

from jobs.delivery.signing import generate_secret
from jobs.settings import Settings
from jobs.storage.keys import Keys
from tests.helpers import Receiver, SimServer, job_body, running_worker, wait_terminal, wait_until

SECRET = generate_secret()


def hook(receiver: Receiver) -> dict[str, str]:
    receiver.secret = SECRET
    return {"url": receiver.url, "secret": SECRET}


async def test_job_end_to_end(
    api: httpx.AsyncClient, worker: None, receiver: Receiver, sim: SimServer
) -> None:
    body = job_body("Write a haiku [sim duration=0.5]", metadata={"team": "a"}, custom_id="c-1")
    body["webhook"] = hook(receiver)
    r = await api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("job_")

    done = await wait_terminal(api, [job["id"]])
    final = done[job["id"]]
    assert final["status"] == "completed"
    assert final["upstream_status"] == "completed"
    assert final["metadata"] == {"team": "a"} and final["custom_id"] == "c-1"
    assert final["output_text"] and "Write a haiku" in final["output_text"]
    assert final["interaction_ids"] == [final["interaction_id"]]

    result = await api.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200
    stored = result.json()
    assert stored["id"] == final["interaction_id"] and stored["status"] == "completed"
    assert stored["labels"]["interq_job"] == job["id"]

    deliveries = await wait_until(receiver.snapshot, what="webhook delivery")
    assert len(deliveries) == 1
    d = deliveries[0]
    assert d.verified, "standardwebhooks refused the signature"
    assert d.body["type"] == "job.completed"
    assert d.body["data"]["id"] == job["id"]
    assert d.body["data"]["output_text"] == final["output_text"]


async def test_failed_interaction_reports_upstream_error(
    api: httpx.AsyncClient, worker: None, receiver: Receiver
) -> None:
    body = job_body("boom [sim duration=0.2 outcome=failed]", webhook=None)
    body["webhook"] = hook(receiver)
    r = await api.post("/v1/jobs", json=body)
    done = await wait_terminal(api, [r.json()["id"]])
    job = done[r.json()["id"]]
    assert job["status"] == "failed"
    assert job["error"]["code"] == "upstream_failed"
    assert "Simulated failure" in job["error"]["message"]
    deliveries = await wait_until(receiver.snapshot, what="webhook")
    assert deliveries[0].body["type"] == "job.failed" and deliveries[0].verified


async def test_waiting_holds_no_worker_slot(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer
) -> None:
    """One worker slot (max_jobs=1). A long interaction is sent first and keeps
    running upstream; a short job sent after it still completes while the long
    one runs. A design whose step waits inside its slot for the interaction to
    end would give the short job no slot until the long one ended."""
    long = (await api.post("/v1/jobs", json=job_body("long [sim duration=20]"))).json()["id"]
    # a step timeout past the long run, so that arq's own timeout cannot free the slot
    patient = settings.model_copy(update={"step_timeout_s": 120.0})
    async with running_worker(patient, max_jobs=1) as w:
        assert w.max_jobs == 1
        await wait_until(lambda: _status(api, long, "running"), timeout=60)
        short = (await api.post("/v1/jobs", json=job_body("short [sim duration=0.2]"))).json()
        done = await wait_terminal(api, [short["id"]], timeout=60)
        assert done[short["id"]]["status"] == "completed"
        still = (await api.get(f"/v1/jobs/{long}")).json()
        assert still["status"] == "running" and still["upstream_status"] == "in_progress"
        await api.post(f"/v1/jobs/{long}/cancel")


async def _status(api: httpx.AsyncClient, job_id: str, status: str) -> bool:
    return bool((await api.get(f"/v1/jobs/{job_id}")).json()["status"] == status)


async def test_idempotency_key(api: httpx.AsyncClient) -> None:
    body = job_body("once")
    r1 = await api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    r2 = await api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert r1.status_code == 202 and r2.status_code == 202
    assert r1.json()["id"] == r2.json()["id"]
    assert r2.headers.get("Idempotent-Replayed") == "true"

    other = job_body("a different body")
    r3 = await api.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k-1"})
    assert r3.status_code == 422
    assert r3.json()["error"]["code"] == "idempotency_key_reused"

    listed = (await api.get("/v1/jobs")).json()["data"]
    assert [j["id"] for j in listed] == [r1.json()["id"]]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"interaction": {"input": "no model"}},
        {"interaction": {"model": "m", "agent": "a", "input": "both"}},
        {"interaction": {"model": "m", "input": "x", "store": False}},
        {"interaction": {"model": "m", "input": "x"}, "webhook": {"url": "not a url"}},
        {
            "interaction": {"model": "m", "input": "x"},
            "webhook": {"url": "http://x", "secret": "s"},
        },
        {"interaction": {"model": "m", "input": "x"}, "timeout_s": -1},
        {"interaction": {"model": "m", "input": "x"}, "surprise": 1},
        {"interaction": "not an object"},
    ],
)
async def test_malformed_body_is_422_json(
    api: httpx.AsyncClient, payload: dict[str, object]
) -> None:
    r = await api.post("/v1/jobs", json=payload)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["message"]


async def test_not_json_and_too_large(api: httpx.AsyncClient, settings: Settings) -> None:
    r = await api.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    big = b'{"interaction": {"model": "m", "input": "' + b"x" * settings.max_body_bytes + b'"}}'
    r = await api.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


async def test_unknown_job_and_listing(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/jobs/job_nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    ids = [(await api.post("/v1/jobs", json=job_body(f"j{i}"))).json()["id"] for i in range(5)]
    page1 = (await api.get("/v1/jobs", params={"limit": 3})).json()
    page2 = (await api.get("/v1/jobs", params={"limit": 3, "cursor": page1["next_cursor"]})).json()
    seen = [j["id"] for j in page1["data"] + page2["data"]]
    assert seen == list(reversed(ids)) and page2["next_cursor"] is None
    queued = (await api.get("/v1/jobs", params={"status": "queued"})).json()["data"]
    assert len(queued) == 5
    assert (await api.get("/v1/jobs", params={"status": "bogus"})).status_code == 422


async def test_cancel_queued_job_is_never_sent(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer
) -> None:
    r = await api.post("/v1/jobs", json=job_body("never sent"))
    jid = r.json()["id"]
    c = await api.post(f"/v1/jobs/{jid}/cancel")
    assert c.status_code == 202 and c.json()["status"] == "cancelled"
    again = await api.post(f"/v1/jobs/{jid}/cancel")
    assert again.status_code == 409
    async with running_worker(settings):
        # the dispatcher drops the cancelled job from its lane without sending it
        await wait_until(lambda: _lane_empty(settings), what="lane drained")
    assert sim.state.creates_by_label("interq_job") == {}


async def test_cancel_running_job(api: httpx.AsyncClient, worker: None, sim: SimServer) -> None:
    r = await api.post("/v1/jobs", json=job_body("long [sim duration=60]"))
    jid = r.json()["id"]
    await wait_until(lambda: _status(api, jid, "running"), what="job running")
    c = await api.post(f"/v1/jobs/{jid}/cancel")
    assert c.status_code == 202
    done = await wait_terminal(api, [jid], timeout=30)
    assert done[jid]["status"] == "cancelled"
    assert any(e["op"] == "cancel" for e in sim.state.requests)


async def _lane_empty(settings: Settings) -> bool:
    import redis.asyncio as aredis

    r = aredis.Redis.from_url(settings.effective_redis_url)
    try:
        return not await r.exists(Keys().ready("default|-"))
    finally:
        await r.aclose()


async def _status(api: httpx.AsyncClient, jid: str, status: str) -> bool:
    return bool((await api.get(f"/v1/jobs/{jid}")).json()["status"] == status)


async def test_health_and_metrics(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).json() == {"status": "ready", "upstream_key": "ok"}
    await api.post("/v1/jobs", json=job_body("count me"))
    text = (await api.get("/metrics")).text
    assert 'interq_jobs_accepted_total{model="sim-model"}' in text
    assert "interq_redis_up 1.0" in text
    assert "interq_queue_depth 1.0" in text  # the job waits for a dispatcher
    assert 'interq_jobs_by_status{status="queued"} 1.0' in text


async def test_a_running_jobs_change_stream_costs_under_2_kb(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    # redis-server as interq starts it (jobs/dev/procs.py) and as deploy/ runs
    # it: --stream-node-max-bytes 512 (at the default, 4,096 bytes preallocated,
    # MEMORY USAGE says ~4.7 KB; here ~1.2 KB)
    import redis.asyncio as aioredis

    r = await api.post("/v1/jobs", json=job_body("slow [sim duration=60]"))
    jid = r.json()["id"]
    async with running_worker(settings):

        async def running() -> bool:
            return bool((await api.get(f"/v1/jobs/{jid}")).json()["status"] == "running")

        await wait_until(running, timeout=30, what="the job running")
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        key = Keys(settings.key_prefix).job_changes(jid)
        assert await client.xlen(key) >= 1
        assert await client.memory_usage(key) < 2048
    finally:
        await client.aclose()
