"""The simulator answers errors as the real API does, in each shape seen or
declared (an object, a list of one, a string code), refuses a misspelt
field with 400 "Unknown name", and has a per-day quota; interq's upstream
client reads every one of them right (the class, the delay, the reset)."""

from __future__ import annotations

import time

import httpx
import pytest

from jobs.dev.simulator.app import create_app
from jobs.dev.simulator.config import SimConfig
from jobs.errors import QuotaExhausted, Rejected, Retryable
from jobs.settings import Settings
from jobs.upstream.client import UpstreamClient

BODY = {"model": "sim-model", "input": "hi", "background": True}


def upstream(config: SimConfig) -> UpstreamClient:
    """interq's real upstream client, talking to an in-process simulator."""
    transport = httpx.ASGITransport(app=create_app(config))
    cfg = Settings(upstream_url="http://sim", upstream_api_version="v1beta")
    return UpstreamClient(cfg, transport=transport)


async def raw_create(config: SimConfig, body: dict[str, object]) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(config))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
        return await c.post("/v1beta/interactions", json=body)


async def test_a_misspelt_field_is_refused_with_unknown_name() -> None:
    r = await raw_create(SimConfig(), {**BODY, "temprature": 0.2})
    assert r.status_code == 400
    assert 'Unknown name "temprature"' in r.json()["error"]["message"]
    client = upstream(SimConfig())
    with pytest.raises(Rejected) as e:
        await client.create({**BODY, "temprature": 0.2})
    assert e.value.status_code == 400 and "Unknown name" in e.value.message
    await client.aclose()


@pytest.mark.parametrize("style", ["object", "list", "string_code"])
async def test_every_error_shape_is_read_with_its_retry_delay(style: str) -> None:
    config = SimConfig(fault_429=1.0, retry_delay_s=7.5, error_style=style)
    r = await raw_create(config, BODY)
    assert r.status_code == 429
    body = r.json()
    err = (body[0] if style == "list" else body)["error"]
    assert isinstance(err["code"], str if style == "string_code" else int)
    client = upstream(config)
    with pytest.raises(Retryable) as e:
        await client.create(BODY)
    assert e.value.status_code == 429 and e.value.delay_s == 7.5
    assert "exhausted" in e.value.message
    await client.aclose()


async def test_the_per_day_quota_is_a_quota_exhausted_until_midnight_pacific() -> None:
    client = upstream(SimConfig(quota_rpd=1))
    await client.create(BODY)  # the day's one create
    with pytest.raises(QuotaExhausted) as e:
        await client.create(BODY)
    assert e.value.status_code == 429
    assert time.time() < e.value.reset_at <= time.time() + 25 * 3600
    await client.aclose()
