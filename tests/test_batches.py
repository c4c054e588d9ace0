"""Batches: all-or-nothing intake, counts, ordered results, fairness, budgets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis

from jobs.delivery.signing import generate_secret
from jobs.settings import ModelLimit, Settings, hash_api_key
from jobs.storage.keys import Keys
from tests.helpers import Receiver, SimServer, running_worker, wait_until

NDJSON = {"content-type": "application/x-ndjson"}


def line(i: int, text: str = "item", **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": f"c-{i}",
        "interaction": {"model": "sim-model", "input": f"{text} {i} [sim duration=0.2]"},
        **extra,
    }


def ndjson(rows: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


async def test_malformed_lines_refuse_the_whole_batch(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    rows: list[Any] = [line(i) for i in range(1, 1001)]
    rows[9] = b"{not json"
    rows[499] = {"custom_id": "c-500", "interaction": {"input": "no model"}}
    rows[997] = line(1)  # custom_id repeats line 1
    r = await api.post("/v1/batches", content=ndjson(rows), headers=NDJSON)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_batch"
    assert [x["line"] for x in err["lines"]] == [10, 500, 998]
    assert "JSON" in err["lines"][0]["error"]
    assert "model" in err["lines"][1]["error"]
    assert "repeats line 1" in err["lines"][2]["error"]
    r2 = aredis.Redis.from_url(settings.effective_redis_url)
    assert (
        await r2.keys(Keys().prefix + ":job:*") == []
        and await r2.keys(Keys().prefix + ":batch:*") == []
    )
    await r2.aclose()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_batch"),
        (b"[1, 2]", "invalid_batch"),
    ],
)
async def test_empty_or_wrong_shapes(api: httpx.AsyncClient, body: bytes, code: str) -> None:
    r = await api.post("/v1/batches", content=body, headers=NDJSON)
    assert r.status_code == 422 and r.json()["error"]["code"] == code
    r = await api.post("/v1/batches", json={"jobs": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_batch_runs_counts_results_and_webhook(
    api: httpx.AsyncClient, worker: None, receiver: Receiver
) -> None:
    secret = generate_secret()
    receiver.secret = secret
    rows = [line(i) for i in range(20)]
    rows[3]["interaction"]["input"] = "x [sim duration=0.2 outcome=failed]"
    r = await api.post(
        "/v1/batches",
        content=ndjson(rows),
        headers={**NDJSON, "X-Webhook-Url": receiver.url, "X-Webhook-Secret": secret},
    )
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["total"] == 20 and batch["counts"]["queued"] == 20

    async def finished() -> dict[str, Any] | None:
        b = (await api.get(f"/v1/batches/{batch['id']}")).json()
        return b if b["status"] == "completed" else None

    done = await wait_until(finished, timeout=60, what="batch completed")
    assert done["counts"]["completed"] == 19 and done["counts"]["failed"] == 1
    assert done["done"] == 20 and done["usage"]["input_tokens"] > 0

    res = await api.get(f"/v1/batches/{batch['id']}/results")
    assert res.headers["content-type"].startswith("application/x-ndjson")
    out = [json.loads(x) for x in res.text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"c-{i}" for i in range(20)]
    assert out[3]["status"] == "failed" and out[3]["error"]["code"] == "upstream_failed"
    assert out[0]["output_text"].startswith("Simulated answer to: item 0")

    deliveries = await wait_until(receiver.snapshot, what="batch webhook")
    assert len(deliveries) == 1 and deliveries[0].verified
    assert deliveries[0].body["type"] == "batch.completed"
    assert deliveries[0].body["data"]["counts"]["completed"] == 19

    listed = (await api.get("/v1/jobs", params={"batch_id": batch["id"], "limit": 5})).json()
    assert [j["custom_id"] for j in listed["data"]] == [f"c-{i}" for i in range(5)]


async def test_cancel_batch_sends_nothing_queued(api: httpx.AsyncClient, sim: SimServer) -> None:
    r = await api.post("/v1/batches", json={"jobs": [line(i) for i in range(50)]})
    bid = r.json()["id"]
    c = await api.post(f"/v1/batches/{bid}/cancel")
    assert c.status_code == 202
    assert c.json()["counts"]["cancelled"] == 50
    again = await api.post(f"/v1/batches/{bid}/cancel")
    # no worker runs, so nothing ends the batch (batch_done): a second cancel is a no-op
    assert again.status_code == 202 and again.json()["counts"]["cancelled"] == 50
    assert sim.state.creates_by_label("interq_job") == {}


@pytest.fixture()
async def two_tenants(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    from api import create_app

    cfg = settings.model_copy(
        update={
            "api_keys": {"team-a": hash_api_key("key-a"), "team-b": hash_api_key("key-b")},
            "limits": {"sim-model": ModelLimit(rpm=100)},
            "rate_window_s": 1,
        }
    )
    app = create_app(cfg)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as client:
            yield client, cfg


async def test_small_batch_is_not_starved_by_a_huge_one(
    two_tenants: tuple[httpx.AsyncClient, Settings],
) -> None:
    client, cfg = two_tenants
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    big = await client.post("/v1/batches", json={"jobs": [line(i) for i in range(5000)]}, headers=a)
    assert big.status_code == 202
    small = await client.post("/v1/batches", json={"jobs": [line(i) for i in range(20)]}, headers=b)
    assert small.status_code == 202
    big_id, small_id = big.json()["id"], small.json()["id"]
    assert (await client.get(f"/v1/batches/{big_id}", headers=b)).status_code == 404

    async with running_worker(cfg):

        async def small_all_started() -> bool:
            jobs = (
                await client.get("/v1/jobs", params={"batch_id": small_id, "limit": 20}, headers=b)
            ).json()["data"]
            return all(j["submitted_at"] is not None for j in jobs)

        await wait_until(small_all_started, timeout=120, what="B's jobs started")
    small_jobs = (
        await client.get("/v1/jobs", params={"batch_id": small_id, "limit": 20}, headers=b)
    ).json()["data"]
    last_small = max(j["submitted_at"] for j in small_jobs)
    # The dispatcher takes at most 50 jobs from a lane per pass, round-robin, so
    # B's 20 are sent within the first passes: fewer than 100 of A's go before them.
    ahead, cursor = 0, None
    for _ in range(4):  # A's first 400 jobs in input (= dispatch) order
        params: dict[str, Any] = {"batch_id": big_id, "limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/jobs", params=params, headers=a)).json()
        ahead += sum(1 for j in page["data"] if (j["submitted_at"] or 1e18) < last_small)
        cursor = page.get("next_cursor")
    assert ahead < 100, ahead


async def test_unknown_key_is_401(two_tenants: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = two_tenants
    assert (await client.get("/v1/jobs")).status_code == 401
    r = await client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
