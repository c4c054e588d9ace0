"""Rerun: a job that ended without an answer gets a new attempt, its history
kept; a batch's failed lines run again and its results keep their custom ids
and order; a repeat with the same Idempotency-Key does nothing new.

The upstream is the simulator: ``[sim fail_first=1]`` fails the first create
of an input and completes the next, as a model that was overloaded for a
while would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import redis.asyncio as aredis

from jobs.settings import Settings
from jobs.storage import changes
from jobs.storage.keys import Keys
from tests.helpers import SimServer, job_body, wait_terminal, wait_until


async def _batch_done(api: httpx.AsyncClient, bid: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        b: dict[str, Any] = (await api.get(f"/v1/batches/{bid}")).json()
        return b if b["status"] != "in_progress" else None

    return await wait_until(done, what=f"batch {bid} to end")


async def test_a_failed_job_reruns_and_keeps_its_first_attempt(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    body = job_body("flaky [sim duration=0.05 fail_first=1]", custom_id="c-1")
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]
    first = (await wait_terminal(api, [jid]))[jid]
    assert first["status"] == "failed" and first["attempt"] == 1

    r = await api.post(f"/v1/jobs/{jid}/rerun")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["attempt"] == 2
    again = (await wait_terminal(api, [jid]))[jid]
    assert again["status"] == "completed" and again["custom_id"] == "c-1"
    [earlier] = again["attempts"]
    assert earlier["attempt"] == 1 and earlier["status"] == "failed"
    assert earlier["interaction_ids"] == first["interaction_ids"]
    assert again["interaction_ids"] != first["interaction_ids"]
    creates = [e for e in sim.state.requests if e["op"] == "create" and e["status"] == 200]
    assert len(creates) == 2


async def test_a_rerun_is_a_change_watchers_see(
    api: httpx.AsyncClient, worker: None, settings: Settings
) -> None:
    """The rerun's change of status goes to the job's and the ended batch's
    change streams, as every transition's does (what SSE watchers read)."""
    body = _lines(1, {0})
    r = await api.post(
        "/v1/batches", content=body, headers={"content-type": "application/x-ndjson"}
    )
    bid = r.json()["id"]
    assert (await _batch_done(api, bid))["counts"]["failed"] == 1
    jid = (await api.get("/v1/jobs", params={"batch_id": bid})).json()["data"][0]["id"]
    assert (await api.post(f"/v1/batches/{bid}/rerun")).status_code == 202
    redis, keys = aredis.Redis.from_url(settings.effective_redis_url), Keys()
    try:
        job_changes, _ = await changes.after(redis, keys.job_changes(jid), changes.START)
        batch_changes, _ = await changes.after(redis, keys.batch_changes(bid), changes.START)
        assert ("queued", "failed") in [(c.status, c.previous) for c in job_changes]
        assert ("in_progress", "completed") in [(c.status, c.previous) for c in batch_changes]
    finally:
        await redis.aclose()
    await _batch_done(api, bid)


async def test_a_completed_job_is_not_rerun(api: httpx.AsyncClient, worker: None) -> None:
    jid = (await api.post("/v1/jobs", json=job_body("fine [sim duration=0.05]"))).json()["id"]
    await wait_terminal(api, [jid])
    r = await api.post(f"/v1/jobs/{jid}/rerun")
    assert r.status_code == 409 and r.json()["error"]["code"] == "illegal_transition", r.text


async def test_two_reruns_of_one_attempt_make_one_new_attempt(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    body = job_body("flaky [sim duration=0.05 fail_first=1]")
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]
    await wait_terminal(api, [jid])
    both = await asyncio.gather(*(api.post(f"/v1/jobs/{jid}/rerun") for _ in range(2)))
    assert sorted(r.status_code for r in both) == [202, 409]
    done = (await wait_terminal(api, [jid]))[jid]
    assert done["status"] == "completed" and done["attempt"] == 2 and len(done["attempts"]) == 1


async def test_a_repeated_idempotency_key_reruns_once(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    body = job_body("flaky twice [sim duration=0.05 fail_first=2]")
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]
    await wait_terminal(api, [jid])
    key = {"Idempotency-Key": "rerun-1"}
    assert (await api.post(f"/v1/jobs/{jid}/rerun", headers=key)).status_code == 202
    second = (await wait_terminal(api, [jid]))[jid]
    assert second["status"] == "failed" and second["attempt"] == 2  # fail_first=2
    r = await api.post(f"/v1/jobs/{jid}/rerun", headers=key)
    assert r.status_code == 202 and r.headers.get("Idempotent-Replayed") == "true"
    assert r.json()["attempt"] == 2 and r.json()["status"] == "failed"  # nothing new
    creates = [e for e in sim.state.requests if e["op"] == "create" and e["status"] == 200]
    assert len(creates) == 2


def _lines(n: int, flaky: set[int]) -> bytes:
    rows = []
    for i in range(n):
        extra = " fail_first=1" if i in flaky else ""
        text = f"line {i} [sim duration=0.05{extra}]"
        rows.append({"custom_id": f"c-{i}", "interaction": {"model": "sim-model", "input": text}})
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


async def test_a_batch_reruns_its_failed_lines_and_keeps_ids_and_order(
    api: httpx.AsyncClient, worker: None
) -> None:
    flaky = {1, 4, 5}
    body = _lines(8, flaky)
    r = await api.post(
        "/v1/batches", content=body, headers={"content-type": "application/x-ndjson"}
    )
    bid = r.json()["id"]
    ended = await _batch_done(api, bid)
    assert ended["counts"]["failed"] == 3 and ended["counts"]["completed"] == 5

    key = {"Idempotency-Key": "batch-rerun-1"}
    r = await api.post(f"/v1/batches/{bid}/rerun", headers=key)
    assert r.status_code == 202, r.text
    assert r.json()["rerun"]["rerun"] == 3 and r.json()["status"] == "in_progress"
    again = await _batch_done(api, bid)
    assert again["status"] == "completed" and again["counts"]["completed"] == 8
    assert again["reruns"] == 3

    lines = [json.loads(x) for x in (await api.get(f"/v1/batches/{bid}/results")).text.splitlines()]
    assert [x["custom_id"] for x in lines] == [f"c-{i}" for i in range(8)]
    assert all(x["status"] == "completed" for x in lines)

    replay = await api.post(f"/v1/batches/{bid}/rerun", headers=key)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["rerun"]["rerun"] == 3 and replay.json()["status"] == "completed"


async def test_a_batch_rerun_refuses_a_status_that_cannot_rerun(
    api: httpx.AsyncClient, worker: None
) -> None:
    r = await api.post(
        "/v1/batches", content=_lines(1, set()), headers={"content-type": "application/x-ndjson"}
    )
    bid = r.json()["id"]
    r = await api.post(f"/v1/batches/{bid}/rerun", params={"status": "completed"})
    assert r.status_code == 422 and "completed" in r.json()["error"]["message"], r.text
