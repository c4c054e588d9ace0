"""Every upstream status and error class, through the simulator: one test per
row of docs/upstream.md. The rows whose logic is a wait (a 429's retry delay,
a cancel answered 404, a paused job's deadline) are shown on a fake clock in
``tests/test_clocked_steps.py`` instead; ``tests/test_faults.py`` still checks
retry delays through the simulator."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from jobs.delivery.signing import generate_secret
from jobs.settings import Settings
from jobs.upstream.client import Retryable, UpstreamClient
from tests.helpers import Receiver, SimServer, job_body, running_worker, wait_terminal, wait_until


async def run_one(api: httpx.AsyncClient, text: str, **extra: Any) -> dict[str, Any]:
    r = await api.post("/v1/jobs", json=job_body(text, **extra))
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    return (await wait_terminal(api, [jid], timeout=60))[jid]


# ---------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("outcome", "status", "upstream"),
    [
        ("completed", "completed", "completed"),
        ("queued", "completed", "completed"),
        ("idle", "completed", "completed"),
        ("failed", "failed", "failed"),
        ("cancelled", "cancelled", "cancelled"),
        ("incomplete", "incomplete", "incomplete"),
        ("budget_exceeded", "incomplete", "budget_exceeded"),
    ],
)
async def test_status_maps_to_job_status(
    api: httpx.AsyncClient, worker: None, outcome: str, status: str, upstream: str
) -> None:
    job = await run_one(api, f"x [sim duration=0.3 outcome={outcome}]")
    assert (job["status"], job["upstream_status"]) == (status, upstream)
    if status == "failed":
        assert job["error"]["upstream"][0]["message"] == "Simulated failure"
    if status == "incomplete":
        assert job["output_text"], "partial output is kept"


def unknown_count() -> float:
    return REGISTRY.get_sample_value("interq_unknown_upstream_status_total") or 0.0


async def test_unknown_status_keeps_polling_and_is_counted(
    api: httpx.AsyncClient, worker: None
) -> None:
    before = unknown_count()
    job = await run_one(api, "x [sim duration=0.5 outcome=unknown]")
    assert job["status"] == "completed"
    assert unknown_count() == before + 1  # logged once, not on every poll
    assert job["poll_count"] >= 2


async def test_requires_action_then_continue_then_completed(
    api: httpx.AsyncClient, worker: None, receiver: Receiver
) -> None:
    secret = generate_secret()
    receiver.secret = secret
    body = job_body("weather? [sim duration=0.2 outcome=requires_action]")
    body["interaction"]["tools"] = [{"type": "function", "name": "get_weather"}]
    body["webhook"] = {"url": receiver.url, "secret": secret}
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]

    async def paused() -> dict[str, Any] | None:
        job = (await api.get(f"/v1/jobs/{jid}")).json()
        return job if job["status"] == "requires_action" else None

    job = await wait_until(paused, what="requires_action")
    [call] = job["pending_calls"]
    assert call["name"] == "get_weather" and call["arguments"] == {"city": "Paris"}
    first = await wait_until(receiver.snapshot, what="requires_action webhook")
    assert first[0].body["type"] == "job.requires_action" and first[0].verified
    assert first[0].body["data"]["pending_calls"] == [call]

    bad = await api.post(
        f"/v1/jobs/{jid}/continue",
        json={"input": [{"type": "function_result", "call_id": "nope", "result": 1}]},
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_call_id"
    answer = {
        "type": "function_result",
        "call_id": call["id"],
        "name": "get_weather",
        "result": "sunny, 21C",
    }
    r = await api.post(f"/v1/jobs/{jid}/continue", json={"input": [answer]})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running"
    again = await api.post(f"/v1/jobs/{jid}/continue", json={"input": [answer]})
    assert again.status_code == 409

    done = (await wait_terminal(api, [jid]))[jid]
    assert done["status"] == "completed"
    assert "sunny, 21C" in done["output_text"]
    assert (
        len(done["interaction_ids"]) == 2 and done["interaction_ids"][1] == done["interaction_id"]
    )
    deliveries = await wait_until(lambda: len(receiver.snapshot()) >= 2 and receiver.snapshot())
    assert [d.body["type"] for d in deliveries] == ["job.requires_action", "job.completed"]
    assert all(d.verified for d in deliveries)
    assert len({d.msg_id for d in deliveries}) == 2


async def test_continuation_token_is_followed(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    job = await run_one(api, "long essay [sim duration=0.2 outcome=requires_continuation]")
    assert job["status"] == "completed"
    first, second = job["interaction_ids"]
    creates = [e for e in sim.state.requests if e["op"] == "create" and e["status"] == 200]
    assert len(creates) == 2
    assert sim.state.interactions[second]["echo"]["previous_interaction_id"] == first
    assert job["output_text"] == "Simulated answer to: long essay"  # both halves, in order


# ---------------------------------------------------------------- cancel, deadline


async def test_deadline_cancels_upstream_and_expires(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    job = await run_one(api, "zombie [sim outcome=never]", timeout_s=1.0)
    assert job["status"] == "expired" and job["error"]["code"] == "deadline"
    rec = sim.state.interactions[job["interaction_id"]]
    assert sim.state.status(rec) == "cancelled"


async def _is(api: httpx.AsyncClient, jid: str, status: str) -> bool:
    return bool((await api.get(f"/v1/jobs/{jid}")).json()["status"] == status)


# ---------------------------------------------------------------- errors


def assert_retry_delays_honoured(log: list[dict[str, Any]]) -> int:
    """After a 429 carrying retryDelay, the next request for the same job
    (create) or interaction (get) comes no sooner than that delay."""
    checked = 0
    for i, e in enumerate(log):
        if e["status"] != 429 or not e.get("retry_delay_s"):
            continue
        key = ("job", e["job"]) if e["op"] == "create" else ("id", e["id"])
        later = [n for n in log[i + 1 :] if n["op"] == e["op"] and n.get(key[0]) == key[1]]
        if later:
            gap = later[0]["t"] - e["t"]
            assert gap >= e["retry_delay_s"], (e, later[0], gap)
            checked += 1
    return checked


async def test_5xx_is_retried(api: httpx.AsyncClient, worker: None, sim: SimServer) -> None:
    sim.state.config.fault_5xx = 0.5
    job = await run_one(api, "x [sim duration=0.3]")
    assert job["status"] == "completed"
    assert any(e["fault"] == "5xx" for e in sim.state.requests)


async def test_lost_create_response_is_resent_and_flagged(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer
) -> None:
    """The create reaches the upstream, the answer times out: the re-send is
    flagged as a possible duplicate, and the simulator shows two creates."""
    sim.state.config.fault_timeout = 1.0
    sim.state.config.fault_ops = {"create"}
    sim.state.config.faults_after_create = True
    sim.state.config.slow_s = 3.0
    jid = (await api.post("/v1/jobs", json=job_body("x [sim duration=0.2]"))).json()["id"]
    fast = settings.model_copy(update={"create_timeout_s": 0.5})
    async with running_worker(fast):
        await wait_until(lambda: sim.state.creates_by_label("interq_job").get(jid, 0) >= 1)
        sim.state.config.fault_timeout = 0.0
        job = (await wait_terminal(api, [jid]))[jid]
    assert job["status"] == "completed" and job["possible_duplicate"] is True
    assert sim.state.creates_by_label("interq_job")[jid] == 2


async def test_rejected_create_fails_with_upstream_message(
    api: httpx.AsyncClient, worker: None
) -> None:
    job = await run_one(api, "x [sim bogus=1]")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "upstream_rejected" and job["error"]["status"] == 400
    assert job["error"]["message"]


async def test_bad_upstream_key_rejects(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    sim.state.config.api_key = "the-right-key"
    job = await run_one(api, "x")
    assert job["status"] == "failed" and job["error"]["status"] == 403
    assert "the-right-key" not in json.dumps(job)


async def test_404_right_after_create_gets_grace(api: httpx.AsyncClient, worker: None) -> None:
    job = await run_one(api, "x [sim duration=0.2 outcome=not_found_first]")
    assert job["status"] == "completed"


async def test_404_past_grace_fails(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer
) -> None:
    jid = (await api.post("/v1/jobs", json=job_body("x [sim outcome=never]"))).json()["id"]
    short = settings.model_copy(update={"not_found_grace_s": 0.5})
    async with running_worker(short):
        await wait_until(lambda: _is(api, jid, "running"), what="running")
        iid = (await api.get(f"/v1/jobs/{jid}")).json()["interaction_id"]
        del sim.state.interactions[iid]
        job = (await wait_terminal(api, [jid]))[jid]
    assert job["status"] == "failed" and job["error"]["code"] == "interaction_not_found"


async def test_408_and_connect_errors_are_retryable() -> None:
    """One-off shapes the simulator does not produce, through MockTransport."""

    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused")
        if calls["n"] == 2:
            return httpx.Response(408, headers={"retry-after-ms": "1500"})
        return httpx.Response(
            429,
            json=[
                {
                    "error": {
                        "code": 429,
                        "message": "slow down",
                        "details": [{"retryDelay": "2.5s"}],
                    }
                }
            ],
            headers={"retry-after": "7"},
        )

    client = UpstreamClient(
        Settings(upstream_url="http://up"), transport=httpx.MockTransport(handler)
    )
    with pytest.raises(Retryable) as e1:
        await client.create({"model": "m", "input": "x"})
    assert e1.value.maybe_sent is False
    with pytest.raises(Retryable) as e2:
        await client.get("a/b")
    assert e2.value.delay_s == 1.5
    with pytest.raises(Retryable) as e3:
        await client.get("x")
    assert e3.value.delay_s == 7.0 and e3.value.message == "slow down"
    await client.aclose()


async def test_the_service_backend_reads_connect_failures_as_not_sent() -> None:
    """The aiohttp backend (no transport given): a refused connection surely
    did not send the create, so its retry is not flagged as a duplicate."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = UpstreamClient(Settings(upstream_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(Retryable) as e:
        await client.create({"model": "m", "input": "x"})
    assert e.value.maybe_sent is False
    await client.aclose()
