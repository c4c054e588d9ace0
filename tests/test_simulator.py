"""Tests for jobs.simulator (the in-memory Gemini Interactions API simulator)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import uvicorn
from google.genai._gaos.types.interactions.interaction import Interaction
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette

from jobs.dev.simulator.app import (
    OUTCOMES,
    OUTPUTS,
    PNG_B64,
    WAV_B64,
    SimConfig,
    config_from_env,
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
    assert seen[0] == first.get(outcome, "in_progress") and seen[-1] == FINAL[outcome]
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
async def test_quota_rpm() -> None:
    app = create_app(SimConfig(duration_s=D, quota_rpm=2, quota_window_s=0.3))
    async with client_for(app) as c:
        ok = [await create(c, "q", labels={"interq_job": "q"}) for _ in range(2)]
        assert [r.status_code for r in ok] == [200, 200]
        r = await create(c, "q", labels={"interq_job": "q"})
        assert r.status_code == 429 and "retry-after" not in r.headers
        err = r.json()["error"]
        assert err["status"] == "RESOURCE_EXHAUSTED" and err["code"] == 429
        info = next(d for d in err["details"] if d["@type"].endswith("google.rpc.RetryInfo"))
        delay = float(info["retryDelay"].removesuffix("s"))
        assert 0 < delay <= 0.3
        log = app.state.sim.requests[-1]
        assert log["fault"] == "quota" and log["status"] == 429 and log["job"] == "q"
        assert abs(log["retry_delay_s"] - delay) < 1e-6
        assert (await c.get(f"/v1/interactions/{ok[0].json()['id']}")).status_code == 200
        await asyncio.sleep(delay + 0.01)
        assert (await create(c, "q", labels={"interq_job": "q"})).status_code == 200
        assert app.state.sim.creates_by_label("interq_job") == {"q": 3}


async def _fault_sequence(seed: int, n: int = 40) -> list[int]:
    cfg = SimConfig(seed=seed, fault_429=0.3, fault_5xx=0.2, retry_delay_s=1.5)
    async with client_for(create_app(cfg)) as c:
        return [(await c.get(f"/v1/interactions/v1_x{i}")).status_code for i in range(n)]


@pytest.mark.asyncio
async def test_faults_deterministic_with_seed() -> None:
    a, b, other = await _fault_sequence(7), await _fault_sequence(7), await _fault_sequence(8)
    assert a == b and a != other
    assert {429, 404} <= set(a) and set(a) <= {404, 429, 500, 503}
    app = create_app(SimConfig(seed=7, fault_429=1.0, retry_delay_s=1.5))
    async with client_for(app) as c:
        r = await c.get("/v1/interactions/v1_x")
        assert r.status_code == 429 and "retry-after" not in r.headers
        assert r.json()["error"]["details"] == [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
        ]
        entry = app.state.sim.requests[-1]
        assert entry["fault"] == "429" and entry["retry_delay_s"] == 1.5
        app.state.sim.config.fault_ops = {"create"}  # GETs no longer faulted
        assert (await c.get("/v1/interactions/v1_x")).status_code == 404


@pytest.mark.asyncio
async def test_fault_5xx_alternates() -> None:
    async with client_for(create_app(SimConfig(fault_5xx=1.0, seed=3))) as c:
        rs = [await create(c, "x") for _ in range(20)]
        assert {r.status_code for r in rs} == {500, 503}
        statuses = {r.json()["error"]["status"] for r in rs}
        assert statuses == {"INTERNAL", "UNAVAILABLE"}
        assert sim_of(c).created == []


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


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERQ_SIM_DURATION_S", "0.5")
    monkeypatch.setenv("INTERQ_SIM_SEED", "9")
    monkeypatch.setenv("INTERQ_SIM_FAULT_429", "0.1")
    monkeypatch.setenv("INTERQ_SIM_FAULT_5XX", "0.2")
    monkeypatch.setenv("INTERQ_SIM_FAULT_TIMEOUT", "0.3")
    monkeypatch.setenv("INTERQ_SIM_QUOTA_RPM", "60")
    monkeypatch.setenv("INTERQ_SIM_WEBHOOK_URLS", "http://a/hook, http://b/hook,")
    monkeypatch.setenv("INTERQ_SIM_WEBHOOK_SECRET", SECRET)
    cfg = config_from_env()
    assert (cfg.duration_s, cfg.seed, cfg.quota_rpm) == (0.5, 9, 60)
    assert (cfg.fault_429, cfg.fault_5xx, cfg.fault_timeout) == (0.1, 0.2, 0.3)
    assert cfg.webhook_urls == ["http://a/hook", "http://b/hook"] and cfg.webhook_secret == SECRET
    assert SimConfig().fault_ops == {"create", "get", "cancel"}
    monkeypatch.delenv("INTERQ_SIM_WEBHOOK_URLS")
    monkeypatch.delenv("INTERQ_SIM_WEBHOOK_SECRET")
    cfg = config_from_env()
    assert cfg.webhook_urls == [] and cfg.webhook_secret is None


@contextlib.asynccontextmanager
async def running(app: Starlette, lifespan: str = "off") -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan=lifespan)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        if lifespan == "off":  # no shutdown handler ran
            await app.state.sim.aclose()


async def settle(app: Starlette) -> None:
    for _ in range(200):
        if all(e["status"] is not None or e["fault"] == "drop" for e in app.state.sim.requests):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("request never finished")


@pytest.mark.asyncio
@pytest.mark.parametrize("after", [False, True])
async def test_drop_and_timeout_over_uvicorn(after: bool) -> None:
    cfg = SimConfig(duration_s=D, fault_drop=1.0, slow_s=0.3, faults_after_create=after)
    app = create_app(cfg)
    sim = app.state.sim
    async with running(app) as url, httpx.AsyncClient(base_url=url, timeout=0.1) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await create(c, "drop me", labels={"interq_job": "d"})
        assert sim.creates_by_label("interq_job") == ({"d": 1} if after else {})
        assert sim.requests[-1]["fault"] == "drop"
        sim.config.fault_drop, sim.config.fault_timeout = 0.0, 1.0
        with pytest.raises(httpx.ReadTimeout):
            await create(c, "slow", labels={"interq_job": "t"})
        await settle(app)
        assert sim.creates_by_label("interq_job").get("t", 0) == (1 if after else 0)
        assert sim.requests[-1]["fault"] == "timeout"
        assert sim.requests[-1]["status"] == (200 if after else 499)
        sim.config.fault_timeout = 0.0
        assert (await create(c, "fine")).status_code == 200


@pytest.mark.asyncio
async def test_drop_under_asgi_transport() -> None:
    async with client_for(create_app(SimConfig(fault_drop=1.0))) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/v1/interactions/v1_x")


@pytest.mark.asyncio
async def test_official_sdk_client_round_trip() -> None:
    """The google-genai client itself talks to the simulator (paths, auth, parsing)."""
    from google import genai
    from google.genai._interactions_errors import NotFoundError

    app = create_app(SimConfig(duration_s=D, api_key="sim-key"))
    async with running(app) as url:
        sdk = genai.Client(api_key="sim-key", http_options={"base_url": url})
        aio = sdk.aio.interactions
        created = await aio.create(
            model=MODEL, input="hello sdk [sim output=audio]", background=True, labels={"a": "b"}
        )
        assert created.status == "in_progress" and created.id
        got = created
        for _ in range(100):
            got = await aio.get(created.id)
            if got.status == "completed":
                break
            await asyncio.sleep(0.01)
        assert got.status == "completed" and got.output_text == "Simulated answer to: hello sdk"
        assert got.output_audio is not None and got.labels == {"a": "b"}
        running_id = (
            await aio.create(model=MODEL, input="x [sim duration=30]", background=True)
        ).id
        assert (await aio.cancel(running_id)).status == "cancelled"
        with pytest.raises(NotFoundError):
            await aio.get("v1_missing")
        assert [e["op"] for e in app.state.sim.requests].count("create") == 2


# --- outgoing webhooks -----------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"interq-simulator-test-secret-32b").decode()


class Receiver:
    """A loopback webhook receiver (a thread) that verifies every delivery with
    the ``standardwebhooks`` library; answers 500 to the first ``fail_first``
    requests, then 204 (400 when verification fails)."""

    def __init__(self, secret: str | None = SECRET, fail_first: int = 0) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = False
                if secret is not None:
                    try:
                        Webhook(secret).verify(raw, headers)
                        verified = True
                    except WebhookVerificationError:
                        pass
                with recv.lock:
                    answer = 500 if len(recv.deliveries) < fail_first else 204
                    if secret is not None and not verified:
                        answer = 400
                    recv.deliveries.append(
                        {"headers": headers, "body": json.loads(raw), "verified": verified}
                        | {"answer": answer}
                    )
                self.send_response(answer)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def got(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.deliveries)

    def accepted(self) -> list[dict[str, Any]]:
        return [d for d in self.got() if d["answer"] == 204]


async def until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    """Bounded polling of an in-process condition."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def quiesce(app: Starlette) -> None:
    """Wait until no timer is armed and no delivery is in flight."""
    await until(lambda: app.state.sim.pending() == 0, "webhook timers and deliveries")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def hooked(uri: str, **meta: Any) -> dict[str, Any]:
    return {"webhook_config": {"uris": [uri], "user_metadata": meta}}


@pytest.mark.asyncio
async def test_webhook_completed_arrives_without_polling() -> None:
    app = create_app(SimConfig(duration_s=D, webhook_secret=SECRET))
    sim = app.state.sim
    with Receiver() as recv:
        async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
            r = await create(c, "hook me", **hooked(recv.url, job="j1"))
            iid = r.json()["id"]
            await until(lambda: recv.got(), "the completed event")
            await quiesce(app)
            assert [e["op"] for e in sim.requests] == ["create"]  # no GET was needed
            assert (await c.get(f"/v1/interactions/{iid}")).json()["status"] == "completed"
            assert (await c.get("/_sim/webhooks")).json() == sim.webhook_log
    [d] = recv.got()
    assert d["verified"] and d["headers"]["webhook-id"].startswith("evt_")
    body = d["body"]
    assert body["type"] == "interaction.completed" and body["version"] == "v1"
    assert body["data"] == {"id": iid} and body["user_metadata"] == {"job": "j1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])
    [entry] = sim.webhook_log
    assert entry == {
        "t": entry["t"],
        "event_id": d["headers"]["webhook-id"],
        "type": "interaction.completed",
        "interaction_id": iid,
        "uri": recv.url,
        "attempt": 1,
        "status": 204,
        "error": None,
    }


@pytest.mark.asyncio
async def test_webhook_events_per_outcome() -> None:
    app = create_app(SimConfig(duration_s=D, webhook_secret=SECRET))
    outcomes = "completed failed requires_action cancelled unknown incomplete"
    outcomes += " requires_continuation never"
    with Receiver() as recv:
        async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
            ids = {}
            for o in outcomes.split():
                r = await create(c, f"{o} [sim outcome={o}]", **hooked(recv.url))
                ids[r.json()["id"]] = o
            await until(lambda: len(recv.got()) >= 5, "five events")
            await quiesce(app)
    got = {ids[d["body"]["data"]["id"]]: d for d in recv.got()}
    assert all(d["verified"] for d in got.values())
    assert {o: d["body"]["type"] for o, d in got.items()} == {
        "completed": "interaction.completed",
        "unknown": "interaction.completed",
        "failed": "interaction.failed",
        "requires_action": "interaction.requires_action",
        "cancelled": "interaction.cancelled",
    }
    failed = got["failed"]["body"]["data"]
    assert failed["error_code"] == 13 and failed["error_message"] == "Simulated failure"
    assert set(got["completed"]["body"]["data"]) == {"id"}
    assert len({d["headers"]["webhook-id"] for d in got.values()}) == 5


@pytest.mark.asyncio
async def test_webhook_cancel_endpoint() -> None:
    app = create_app(SimConfig(duration_s=D, webhook_secret=SECRET))
    sim = app.state.sim
    with Receiver() as recv:
        async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
            long_id = (await create(c, "long [sim duration=30]", **hooked(recv.url))).json()["id"]
            assert sim.pending() == 1  # its end-of-run timer
            assert (await c.post(f"/v1/interactions/{long_id}/cancel")).status_code == 200
            await until(lambda: len(recv.got()) == 1, "the cancelled event")
            await quiesce(app)  # the timer was disarmed, not just ignored
            assert (await c.post(f"/v1/interactions/{long_id}/cancel")).status_code == 400
            # requires_action, then cancelled: one event each
            text = "tool [sim outcome=requires_action duration=0]"
            act_id = (await create(c, text, **hooked(recv.url))).json()["id"]
            await until(lambda: len(recv.got()) == 2, "the requires_action event")
            assert (await c.post(f"/v1/interactions/{act_id}/cancel")).status_code == 200
            await until(lambda: len(recv.got()) == 3, "the second cancelled event")
            await quiesce(app)
    seen = [(d["body"]["type"], d["body"]["data"]["id"], d["verified"]) for d in recv.got()]
    assert seen == [
        ("interaction.cancelled", long_id, True),
        ("interaction.requires_action", act_id, True),
        ("interaction.cancelled", act_id, True),
    ]


@pytest.mark.asyncio
async def test_webhook_static_urls_and_config() -> None:
    app = create_app(SimConfig(duration_s=D))
    sim = app.state.sim
    with Receiver() as static, Receiver() as dynamic, Receiver(secret=None) as unsigned:
        async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
            for bad in ({"webhook_secret": "nope"}, {"webhook_urls": "http://x"}):
                assert (await c.post("/_sim/config", json=bad)).status_code == 400
            for wc in ({"uris": "http://x"}, {"uris": ["ftp://x"]}, {"user_metadata": 1}):
                assert (await create(c, "x", webhook_config=wc)).status_code == 400
            # no secret yet: delivered unsigned
            await c.post("/_sim/config", json={"webhook_urls": [unsigned.url]})
            await create(c, "unsigned")
            await until(lambda: unsigned.got(), "the unsigned event")
            cfg = {"webhook_urls": [static.url], "webhook_secret": SECRET}
            r = await c.post("/_sim/config", json=cfg)
            assert r.json()["webhook_urls"] == [static.url] and sim.config.webhook_secret == SECRET
            a = (await create(c, "a")).json()["id"]
            b = (await create(c, "b", webhook_config={"user_metadata": {"k": "v"}})).json()["id"]
            d = (await create(c, "d", **hooked(dynamic.url))).json()["id"]
            await until(lambda: len(static.got()) == 2 and dynamic.got(), "three events")
            await quiesce(app)
    [u] = unsigned.got()
    assert "webhook-signature" not in u["headers"] and u["headers"]["webhook-id"].startswith("evt_")
    assert all(x["verified"] for x in static.got() + dynamic.got())
    by_id = {x["body"]["data"]["id"]: x["body"] for x in static.got()}
    assert set(by_id) == {a, b} and "user_metadata" not in by_id[a]
    assert by_id[b]["user_metadata"] == {"k": "v"}
    # webhook_config.uris replaces the registered webhooks for that interaction
    assert [x["body"]["data"]["id"] for x in dynamic.got()] == [d]


@pytest.mark.asyncio
async def test_webhook_retry_keeps_webhook_id() -> None:
    # faults never apply to outgoing webhooks
    cfg = SimConfig(duration_s=D, webhook_secret=SECRET, fault_5xx=1.0, fault_ops={"get"})
    app = create_app(cfg)
    sim = app.state.sim
    with Receiver(fail_first=2) as recv:
        async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
            iid = (await create(c, "flaky receiver", **hooked(recv.url))).json()["id"]
            await until(lambda: recv.accepted(), "the third attempt", timeout=8.0)
            await quiesce(app)
    got = recv.got()
    assert [d["answer"] for d in got] == [500, 500, 204]
    assert len({d["headers"]["webhook-id"] for d in got}) == 1
    assert all(d["verified"] and d["body"]["data"]["id"] == iid for d in got)
    assert [(e["attempt"], e["status"], e["error"]) for e in sim.webhook_log] == [
        (1, 500, "HTTP 500"),
        (2, 500, "HTTP 500"),
        (3, 204, None),
    ]
    assert {e["event_id"] for e in sim.webhook_log} == {got[0]["headers"]["webhook-id"]}


@pytest.mark.asyncio
async def test_webhook_gives_up_on_connection_errors() -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    cfg = SimConfig(duration_s=0.0, webhook_secret=SECRET, webhook_retry_s=[0.01, 0.02])
    app = create_app(cfg)
    sim = app.state.sim
    async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
        await create(c, "nobody listens", **hooked(dead))
        await until(lambda: len(sim.webhook_log) == 3, "three attempts")
        await quiesce(app)
    assert [e["attempt"] for e in sim.webhook_log] == [1, 2, 3]
    assert all(e["status"] is None and "ConnectError" in e["error"] for e in sim.webhook_log)
    assert len({e["event_id"] for e in sim.webhook_log}) == 1


@pytest.mark.asyncio
async def test_webhook_lifespan_shutdown_cancels_pending() -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    cfg = SimConfig(duration_s=D, webhook_secret=SECRET, webhook_retry_s=[30.0])
    app = create_app(cfg)
    sim = app.state.sim
    async with running(app, lifespan="on") as url, httpx.AsyncClient(base_url=url) as c:
        await create(c, "later [sim duration=30]", **hooked(dead))
        await create(c, "now [sim duration=0]", **hooked(dead))
        await until(lambda: len(sim.webhook_log) == 1, "the first failed attempt")
        tasks = set(sim.webhooks._tasks)
        assert sim.pending() == 2 and len(tasks) == 1  # one timer, one sleeping retry
    # running(lifespan="on") leaves the clean-up to the app's shutdown handler
    assert sim.pending() == 0 and all(t.cancelled() for t in tasks)
    assert len(sim.webhook_log) == 1
