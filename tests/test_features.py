"""Features that had no test of their own: a receiver's 410 Gone, removing the
tenant's webhook endpoint, cancelling a paused job, and the size caps."""

from __future__ import annotations

import json

import httpx
import pytest

from jobs.delivery.signing import generate_secret
from jobs.dev.receiver import Receiver
from jobs.domain.requests import MAX_METADATA_BYTES
from jobs.settings import Settings
from tests.helpers import job_body, settled_event, wait_terminal, wait_until


async def test_a_410_gone_stops_the_retries(
    api: httpx.AsyncClient, worker: None, receiver: Receiver
) -> None:
    receiver.status = 410
    body = job_body("x [sim duration=0.1]")
    body["webhook"] = {"url": receiver.url, "secret": generate_secret()}
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]

    ev = await settled_event(api, jid)
    assert ev["state"] == "gone" and ev["attempts"] == 1
    assert receiver.requests == 1  # no retry on the schedule (0.2 s, 0.5 s, ...)
    dead = (await api.get("/v1/webhooks/dead-letters")).json()
    assert jid not in json.dumps(dead)  # gone is not dead-lettered


async def test_delete_webhook_endpoint_stops_default_deliveries(
    api: httpx.AsyncClient, worker: None, receiver: Receiver
) -> None:
    put = await api.put("/v1/webhook-endpoint", json={"url": receiver.url})
    assert put.status_code == 200
    assert (await api.delete("/v1/webhook-endpoint")).status_code == 204
    assert (await api.get("/v1/webhook-endpoint")).status_code == 404
    assert (await api.delete("/v1/webhook-endpoint")).status_code == 204  # idempotent

    jid = (await api.post("/v1/jobs", json=job_body("x [sim duration=0.1]"))).json()["id"]
    await wait_terminal(api, [jid])

    ev = await settled_event(api, jid)
    assert ev["state"] == "no_endpoint" and receiver.requests == 0


async def test_cancelling_a_paused_job(api: httpx.AsyncClient, worker: None) -> None:
    body = job_body("weather? [sim duration=0.1 outcome=requires_action]")
    body["interaction"]["tools"] = [{"type": "function", "name": "get_weather"}]
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]

    async def paused() -> bool:
        return bool((await api.get(f"/v1/jobs/{jid}")).json()["status"] == "requires_action")

    await wait_until(paused, what="requires_action")
    r = await api.post(f"/v1/jobs/{jid}/cancel")
    assert r.status_code == 202, r.text
    done = await wait_terminal(api, [jid])
    assert done[jid]["status"] == "cancelled"
    answer = {"type": "function_result", "call_id": "c1", "name": "get_weather", "result": "sun"}
    again = await api.post(f"/v1/jobs/{jid}/continue", json={"input": [answer]})
    assert again.status_code == 409  # a cancelled job takes no answer


async def test_metadata_over_its_cap_is_422(api: httpx.AsyncClient) -> None:
    body = job_body("x")
    body["metadata"] = {"blob": "x" * MAX_METADATA_BYTES}
    r = await api.post("/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert (await api.get("/v1/jobs")).json()["data"] == []


@pytest.fixture()
def tight(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_batch_jobs": 3, "max_batch_bytes": 4096})


async def test_batch_caps_lines_and_bytes(tight: Settings) -> None:
    from api import create_app

    app = create_app(tight)
    line = {"interaction": {"model": "m", "input": "hi"}}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as c:
            four = [{**line, "custom_id": f"c{i}"} for i in range(4)]
            r = await c.post("/v1/batches", json={"jobs": four})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_batch"
            ndjson = b"\n".join(
                json.dumps({**line, "custom_id": "c" * 5000}).encode() for _ in "ab"
            )
            big = await c.post(
                "/v1/batches", content=ndjson, headers={"content-type": "application/x-ndjson"}
            )
            assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
            assert (await c.get("/v1/jobs")).json()["data"] == []
