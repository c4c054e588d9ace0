"""Simulator tests: quota, seeded faults, env config, drops and timeouts over
uvicorn, and the official SDK client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from jobs.dev.simulator.app import (
    SimConfig,
    config_from_env,
    create_app,
)
from tests.test_simulator import (
    MODEL,
    D,
    client_for,
    create,
    sim_of,
)

SECRET = "whsec_" + base64.b64encode(b"interq-simulator-test-secret-32b").decode()


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
