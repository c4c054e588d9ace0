"""Tests for jobs.simulator (the in-memory Gemini Interactions API simulator)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google.genai._gaos.types.interactions.interaction import Interaction
from starlette.applications import Starlette

from jobs.dev.simulator.app import (
    OUTCOMES,
    OUTPUTS,
    PNG_B64,
    WAV_B64,
    SimConfig,
    create_app,
    extract_texts,
    parse_directive,
    retry_delay_str,
)

MODEL = "gemini-3.5-flash"
D = 0.08  # default scenario duration for tests
FINAL = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "incomplete": "incomplete",
    "budget_exceeded": "budget_exceeded",
    "requires_action": "requires_action",
    "requires_continuation": "requires_continuation",
    "cancel404": "completed",
    "unknown": "completed",
    "not_found_first": "completed",
    "queued": "completed",
    "idle": "completed",
}


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(SimConfig(duration_s=D))) as c:
        yield c


def sim_of(c: httpx.AsyncClient) -> Any:
    transport = c._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app.state.sim  # type: ignore[attr-defined]


def conform(body: dict[str, Any]) -> Interaction:
    """Validate with the SDK model, strictly (no unknown-variant fallback)."""
    obj = Interaction.model_validate(body)
    for step in obj.steps or []:
        assert not getattr(step, "is_unknown", False), step
        for part in getattr(step, "content", None) or []:
            assert not getattr(part, "is_unknown", False), part
    return obj


async def create(
    c: httpx.AsyncClient, text: Any, *, background: bool = True, ver: str = "v1", **extra: Any
) -> httpx.Response:
    body = {"model": MODEL, "input": text, "background": background, **extra}
    return await c.post(f"/{ver}/interactions", json=body)


async def poll(
    c: httpx.AsyncClient, iid: str, until: set[str], seen: list[str] | None = None
) -> dict[str, Any]:
    for _ in range(300):
        r = await c.get(f"/v1/interactions/{iid}", params={"stream": "false"})
        if r.status_code == 200:
            body: dict[str, Any] = r.json()
            conform(body)
            if seen is not None and (not seen or seen[-1] != body["status"]):
                seen.append(body["status"])
            if body["status"] in until:
                return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"{iid} never reached {until}")


def model_text(body: dict[str, Any]) -> str:
    outs = [s for s in body["steps"] if s["type"] == "model_output"]
    return "".join(p["text"] for p in outs[-1].get("content", []) if p["type"] == "text")


def snippet(text: str) -> str:
    return re.sub(r"\[sim[^\]]*\]", "", text).strip()[:60]


def test_directive_and_text_extraction() -> None:
    assert parse_directive("hi [sim duration=0.5 outcome=failed output=json] x") == {
        "duration": 0.5,
        "outcome": "failed",
        "output": "json",
    }
    assert parse_directive("no directive") == {}
    for bad in ("[sim outcome=nope]", "[sim colour=red]", "[sim duration=abc]"):
        with pytest.raises(ValueError):
            parse_directive(bad)
    steps = [{"type": "user_input", "content": [{"type": "text", "text": "a"}]}]
    assert extract_texts("s") == ["s"]
    assert extract_texts({"type": "text", "text": "c"}) == ["c"]
    assert extract_texts([{"type": "text", "text": "x"}, {"type": "image", "data": ""}]) == ["x"]
    assert extract_texts(steps) == ["a"]
    assert retry_delay_str(1.5) == "1.5s" and retry_delay_str(2.0) == "2s"


@pytest.mark.asyncio
@pytest.mark.parametrize("outcome", sorted(FINAL))
async def test_lifecycle(client: httpx.AsyncClient, outcome: str) -> None:
    # the simulator's clock moves 5 ms at each reading, not with the wall: the first
    # answer comes before the end, however slowly this machine runs the polls
    sim_of(client).clock = itertools.count(0.0, 0.005).__next__
    text = f"Write a haiku about {outcome} [sim duration={D} outcome={outcome}]"
    r = await create(client, text, labels={"interq_job": "j1"})
    assert r.status_code == 200
    created = r.json()
    conform(created)
    assert created["id"].startswith("v1_") and created["object"] == "interaction"
    assert created["model"] == MODEL and created["labels"] == {"interq_job": "j1"}
    first = {"queued": "queued", "idle": "idle", "unknown": "paused_for_review"}
    assert created["status"] == first.get(outcome, "in_progress")
    seen: list[str] = []
    body = await poll(client, created["id"], {FINAL[outcome]}, seen)
    path = list(dict.fromkeys([first.get(outcome, "in_progress"), "in_progress", FINAL[outcome]]))
    # polls see the first status, then the final one, in that order (a slow poll
    # may see only the final one: the timing is the machine's, not the test's)
    assert seen[-1] == FINAL[outcome] and all(st in path for st in seen), seen
    assert seen == sorted(seen, key=path.index), seen
    assert body["steps"][0] == {"type": "user_input", "content": [{"type": "text", "text": text}]}
    assert body["labels"] == {"interq_job": "j1"} and body["service_tier"] == "standard"
    assert "usage" in body and body["usage"]["total_tokens"] > 0
    types = [s["type"] for s in body["steps"]]
    if FINAL[outcome] == "completed":
        assert types == ["user_input", "thought", "model_output"]
        assert model_text(body) == f"Simulated answer to: {snippet(text)}"
    elif outcome == "failed":
        assert body["errors"][0]["message"] == "Simulated failure"
        assert body["steps"][-1]["error"] == {"code": 13, "message": "Simulated failure"}
    elif outcome in ("incomplete", "budget_exceeded"):
        assert model_text(body) and "Simulated answer to: ".startswith(model_text(body)[:10])
    elif outcome == "cancelled":
        assert types == ["user_input"]
    elif outcome == "requires_action":
        assert body["steps"][-1]["type"] == "function_call"
        assert body["steps"][-1]["name"] == "get_weather"
    elif outcome == "requires_continuation":
        assert body["continuation_token"].startswith("ct_")


@pytest.mark.asyncio
async def test_never_stays_in_progress(client: httpx.AsyncClient) -> None:
    r = await create(client, "zombie [sim duration=0.01 outcome=never]")
    iid = r.json()["id"]
    for _ in range(5):
        await asyncio.sleep(0.02)
        body = (await client.get(f"/v1/interactions/{iid}")).json()
        assert body["status"] == "in_progress" and "usage" not in body
    assert conform(body).status == "in_progress"


@pytest.mark.asyncio
async def test_sdk_conformance_matrix(client: httpx.AsyncClient) -> None:
    async def one(outcome: str, output: str, background: bool) -> None:
        text = (
            f"Conformance {outcome}/{output} [sim duration=0.05 outcome={outcome} output={output}]"
        )
        r = await create(client, text, background=background, tools=[{"type": "function"}])
        assert r.status_code == 200, r.text
        obj = conform(r.json())
        if outcome == "never":
            assert obj.status == "in_progress"
            cancelled = await client.post(f"/v1/interactions/{obj.id}/cancel")
            assert conform(cancelled.json()).status == "cancelled"
            return
        want = FINAL[outcome]
        body = await poll(client, r.json()["id"], {want}) if background else r.json()
        obj = conform(body)
        assert obj.status == want
        if not background:
            assert not body["steps"] or body["steps"][0]["type"] != "user_input"
        if want != "completed":
            return
        last = [s for s in obj.steps or [] if s.type == "model_output"][-1]
        text_parts = [p for p in last.content or [] if p.type == "text"]
        assert text_parts[0].text == model_text(body) == obj.output_text
        if output == "json":
            assert json.loads(model_text(body)) == {"answer": 42, "input": snippet(text)}
        else:
            assert model_text(body) == f"Simulated answer to: {snippet(text)}"
        if output == "image":
            assert obj.output_image is not None and obj.output_image.data == PNG_B64
            assert base64.b64decode(PNG_B64).startswith(b"\x89PNG\r\n\x1a\n")
        if output == "audio":
            assert obj.output_audio is not None and obj.output_audio.data == WAV_B64
            assert base64.b64decode(WAV_B64)[:4] == b"RIFF"

    await asyncio.gather(
        *(one(o, out, bg) for o in OUTCOMES for out in OUTPUTS for bg in (True, False))
    )


@pytest.mark.asyncio
async def test_cancel(client: httpx.AsyncClient) -> None:
    iid = (await create(client, "long [sim duration=30]")).json()["id"]
    r = await client.post(f"/v1/interactions/{iid}/cancel")
    assert r.status_code == 200 and conform(r.json()).status == "cancelled"
    assert (await poll(client, iid, {"cancelled"}))["steps"][-1]["type"] == "user_input"
    again = await client.post(f"/v1/interactions/{iid}/cancel")
    assert again.status_code == 400
    assert again.json()["error"]["status"] == "FAILED_PRECONDITION"
    done = (await create(client, "quick [sim duration=0]")).json()["id"]
    await poll(client, done, {"completed"})
    assert (await client.post(f"/v1/interactions/{done}/cancel")).status_code == 400


@pytest.mark.asyncio
async def test_cancel404_scenario(client: httpx.AsyncClient) -> None:
    iid = (await create(client, f"x [sim outcome=cancel404 duration={D}]")).json()["id"]
    r = await client.post(f"/v1/interactions/{iid}/cancel")
    assert r.status_code == 404
    assert r.json() == {
        "error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}
    }
    await poll(client, iid, {"completed"})


@pytest.mark.asyncio
async def test_unknown_id_and_delete(client: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/v1/interactions/v1_nope"),
        ("POST", "/v1/interactions/v1_nope/cancel"),
        ("DELETE", "/v1/interactions/v1_nope"),
    ):
        r = await client.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
        assert r.json()["error"]["code"] == 404
    iid = (await create(client, "to delete")).json()["id"]
    r = await client.delete(f"/v1/interactions/{iid}")
    assert r.status_code == 200 and r.json() == {}
    assert (await client.get(f"/v1/interactions/{iid}")).status_code == 404
    assert sim_of(client).creates_by_label("interq_job") == {}


@pytest.mark.asyncio
async def test_not_found_first(client: httpx.AsyncClient) -> None:
    iid = (await create(client, "x [sim outcome=not_found_first duration=0]")).json()["id"]
    codes = [(await client.get(f"/v1/interactions/{iid}")).status_code for _ in range(3)]
    assert codes == [404, 404, 200]


@pytest.mark.asyncio
async def test_validation_errors(client: httpx.AsyncClient) -> None:
    async def bad(body: Any, code: int = 400) -> None:
        r = await client.post("/v1/interactions", json=body)
        assert r.status_code == code, (body, r.text)
        want = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}[code]
        assert r.json()["error"]["status"] == want and r.json()["error"]["code"] == code

    await bad({"model": MODEL, "agent": "deep-research-pro-preview-12-2025", "input": "x"})
    await bad({"input": "x"})
    await bad({"model": MODEL, "input": "x", "background": True, "store": False})
    await bad({"model": MODEL, "input": "x", "stream": True})
    await bad({"model": MODEL, "input": "x [sim outcome=bogus]"})
    await bad({"model": MODEL})
    await bad({"model": MODEL, "input": "x", "previous_interaction_id": "v1_missing"}, 404)
    running = (await create(client, "slow [sim duration=30]")).json()["id"]
    await bad({"model": MODEL, "input": "x", "previous_interaction_id": running})
    r = await client.post("/v1/interactions", content=b"{not json")
    assert r.status_code == 400
    async with client_for(create_app(SimConfig(api_key="k"))) as c:
        r = await create(c, "x")
        assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
        r = await c.post(
            "/v1/interactions", json={"model": MODEL, "input": "x"}, headers={"x-goog-api-key": "k"}
        )
        assert r.status_code == 200


@pytest.mark.asyncio
async def test_function_calling_round_trip(client: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "name": "lookup_city", "description": "d", "parameters": {}}]
    text = f"Weather? [sim outcome=requires_action duration={D}]"
    first = (await create(client, text, tools=tools)).json()["id"]
    body = await poll(client, first, {"requires_action"})
    call = body["steps"][-1]
    assert call["type"] == "function_call" and call["name"] == "lookup_city"
    assert call["arguments"] == {"city": "Paris"} and call["id"].startswith("call_")
    result = {"type": "function_result", "name": "lookup_city", "result": {"temp_c": 21}}
    wrong = await create(
        client, [result | {"call_id": "call_x"}], tools=tools, previous_interaction_id=first
    )
    assert wrong.status_code == 400
    r = await create(
        client, [result | {"call_id": call["id"]}], tools=tools, previous_interaction_id=first
    )
    assert r.status_code == 200
    follow = await poll(client, r.json()["id"], {"completed"})
    assert follow["previous_interaction_id"] == first
    assert follow["steps"][0]["type"] == "function_result"
    assert '{"temp_c": 21}' in model_text(follow) and "lookup_city" in model_text(follow)


@pytest.mark.asyncio
async def test_continuation_token_flow(client: httpx.AsyncClient) -> None:
    text = f"Long essay [sim outcome=requires_continuation duration={D}]"
    first = (await create(client, text)).json()["id"]
    body = await poll(client, first, {"requires_continuation"})
    token, part1 = body["continuation_token"], model_text(body)
    for bad_body in (
        {"previous_interaction_id": first, "continuation_token": "ct_wrong"},
        {"continuation_token": token},
    ):
        r = await client.post("/v1/interactions", json={"model": MODEL, **bad_body})
        assert r.status_code == 400
    r = await client.post(
        "/v1/interactions",
        json={
            "model": MODEL,
            "background": True,
            "previous_interaction_id": first,
            "continuation_token": token,
        },
    )
    assert r.status_code == 200, r.text
    done = await poll(client, r.json()["id"], {"completed"})
    assert part1 + model_text(done) == f"Simulated answer to: {snippet(text)}"
    assert "continuation_token" not in done


@pytest.mark.asyncio
async def test_sync_create_and_store_false(client: httpx.AsyncClient) -> None:
    r = await create(client, "sync [sim duration=5]", background=False)
    body = r.json()
    assert body["status"] == "completed" and body["steps"][0]["type"] == "thought"
    full = (await client.get(f"/v1/interactions/{body['id']}")).json()
    assert full["steps"][0]["type"] == "user_input"
    r = await create(client, "ephemeral", background=False, store=False)
    assert r.status_code == 200
    assert (await client.get(f"/v1/interactions/{r.json()['id']}")).status_code == 404


@pytest.mark.asyncio
async def test_v1beta_and_unknown_version(client: httpx.AsyncClient) -> None:
    r = await create(client, "beta [sim duration=0]", ver="v1beta")
    assert r.status_code == 200
    assert (await client.get(f"/v1beta/interactions/{r.json()['id']}")).json()["status"] == (
        "completed"
    )
    assert (await create(client, "x", ver="v2")).status_code == 404


@pytest.mark.asyncio
async def test_request_log_stats_config_reset(client: httpx.AsyncClient) -> None:
    sim = sim_of(client)
    iid = (await create(client, "log me [sim duration=30]", labels={"interq_job": "j7"})).json()[
        "id"
    ]
    await client.get(f"/v1/interactions/{iid}")
    await client.post(f"/v1/interactions/{iid}/cancel")
    await client.delete(f"/v1/interactions/{iid}")
    await create(client, "other", labels={"interq_job": "j8"})
    log = (await client.get("/_sim/requests")).json()
    assert [e["op"] for e in log] == ["create", "get", "cancel", "delete", "create"]
    assert [e["id"] for e in log[:4]] == [iid] * 4
    assert all(e["status"] == 200 and e["fault"] is None for e in log)
    assert [e["job"] for e in log] == ["j7"] * 4 + ["j8"]
    assert all(isinstance(e["t"], float) and e["retry_delay_s"] is None for e in log)
    assert log == sim.requests
    stats = (await client.get("/_sim/stats")).json()
    assert stats["creates"] == 2 and stats["gets"] == 1 and stats["cancels"] == 1
    assert stats["status_429"] == 0 and stats["status_5xx"] == 0
    assert stats["creates_by_job"] == {"j7": 1, "j8": 1} == sim.creates_by_label("interq_job")
    r = await client.post("/_sim/config", json={"fault_429": 1.0, "fault_ops": ["get"]})
    assert r.json()["fault_429"] == 1.0 and sim.config.fault_ops == {"get"}
    assert (await client.get("/v1/interactions/v1_x")).status_code == 429
    assert (await client.post("/_sim/config", json={"nope": 1})).status_code == 400
    assert (await client.post("/_sim/reset")).json() == {}
    assert sim.requests == [] and sim.interactions == {} and sim.creates_by_label("x") == {}
