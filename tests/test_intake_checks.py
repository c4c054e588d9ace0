"""Create bodies the real API refuses are refused at intake (422), for a single
job and for each batch line: the SDK's own types (``jobs/domain/checks.py``),
values JSON cannot carry, and interq's own rules (webhook_config, chaining to
another tenant's interaction)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis

from jobs.settings import Settings, hash_api_key
from jobs.storage.keys import Keys
from tests.helpers import app_client

MODEL = "sim-model"
NDJSON = {"content-type": "application/x-ndjson"}
JSON = {"content-type": "application/json"}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hello [sim duration=0.2]", **extra}


# (name, interaction as raw JSON text, the field path the 422 names)
BAD: list[tuple[str, str, str]] = [
    (
        "misspelt field",
        json.dumps(body(generation_config={"temprature": 0.5})),
        "interaction.generation_config.temprature",
    ),
    (
        "wrong type",
        json.dumps(body(generation_config={"temperature": "hot"})),
        "interaction.generation_config.temperature",
    ),
    ("unknown tool", json.dumps(body(tools=[{"type": "frobnicate"}])), "interaction.tools.0.type"),
    (
        "lone surrogate",
        '{"model": "sim-model", "input": "a \\ud800 b"}',
        "input",
    ),
    (
        "NaN",
        '{"model": "sim-model", "input": "x", "generation_config": {"temperature": NaN}}',
        "generation_config.temperature",
    ),
    ("Infinity", '{"model": "sim-model", "input": "x", "labels": {"a": Infinity}}', "labels.a"),
    ("webhook_config", json.dumps(body(webhook_config={"uris": ["https://x"]})), "webhook_config"),
]
IDS = [b[0] for b in BAD]


@pytest.mark.parametrize(("name", "raw", "field"), BAD, ids=IDS)
async def test_bad_body_is_refused_for_a_single_job(
    api: httpx.AsyncClient, name: str, raw: str, field: str
) -> None:
    r = await api.post("/v1/jobs", content=f'{{"interaction": {raw}}}', headers=JSON)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert field in err["message"], err["message"]


@pytest.mark.parametrize(("name", "raw", "field"), BAD, ids=IDS)
async def test_bad_body_is_refused_as_a_batch_line(
    api: httpx.AsyncClient, name: str, raw: str, field: str
) -> None:
    good = json.dumps({"custom_id": "ok", "interaction": body()})
    bad = f'{{"custom_id": "bad", "interaction": {raw}}}'
    r = await api.post("/v1/batches", content=f"{good}\n{bad}\n", headers=NDJSON)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_batch"
    [only] = err["lines"]
    assert only["line"] == 2 and field in only["error"], only


@pytest.mark.parametrize("meta", ["NaN", "[1, -Infinity]", '{"k": "\\udfff"}'])
async def test_metadata_json_cannot_carry_is_refused(api: httpx.AsyncClient, meta: str) -> None:
    inter = json.dumps(body())
    r = await api.post(
        "/v1/jobs", content=f'{{"interaction": {inter}, "metadata": {meta}}}', headers=JSON
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "metadata" in r.json()["error"]["message"]
    line = f'{{"custom_id": "m", "interaction": {inter}, "metadata": {meta}}}'
    r = await api.post("/v1/batches", content=line + "\n", headers=NDJSON)
    assert r.status_code == 422, r.text
    [only] = r.json()["error"]["lines"]
    assert "metadata" in only["error"]


def full_body() -> dict[str, Any]:
    return body(
        system_instruction="Answer briefly.",
        generation_config={"temperature": 0.2, "max_output_tokens": 256, "top_p": 0.9},
        tools=[
            {
                "type": "function",
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"type": "google_search"},
        ],
    )


async def test_a_valid_body_with_tools_and_config_is_accepted(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/jobs", json={"interaction": full_body(), "metadata": {"a": [1.5]}})
    assert r.status_code == 202, r.text
    lines = [{"custom_id": f"c{i}", "interaction": full_body()} for i in range(3)]
    r = await api.post("/v1/batches", json={"jobs": lines})
    assert r.status_code == 202, r.text


async def test_a_typed_input_of_steps_is_accepted(api: httpx.AsyncClient) -> None:
    steps = [{"type": "user_input", "content": [{"type": "text", "text": "hi"}]}]
    r = await api.post("/v1/jobs", json={"interaction": body(input=steps)})
    assert r.status_code == 202, r.text
    r = await api.post("/v1/jobs", json={"interaction": body(input=[{"type": "text"}])})
    assert r.status_code == 422 and "interaction.input.0.text" in r.text


@pytest.fixture()
async def two_tenants(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    keys = {"team-a": hash_api_key("key-a"), "team-b": hash_api_key("key-b")}
    async with app_client(settings.model_copy(update={"api_keys": keys})) as client:
        yield client


KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"Authorization": "Bearer key-b"}


async def name_interactions(settings: Settings, named: dict[str, str]) -> None:
    """Interaction id -> job id, as the submit step records it once the
    upstream names the interaction."""
    r = aredis.from_url(settings.effective_redis_url)
    try:
        for iid, job_id in named.items():
            await r.set(Keys(settings.key_prefix).iid(iid), job_id)
    finally:
        await r.aclose()


async def test_previous_interaction_must_be_the_tenants_own(
    two_tenants: httpx.AsyncClient, settings: Settings
) -> None:
    a, b = KEY_A, KEY_B
    first = await two_tenants.post("/v1/jobs", json={"interaction": body()}, headers=a)
    assert first.status_code == 202
    await name_interactions(settings, {"v1_team_a_1": first.json()["id"]})
    chained = {"interaction": body(previous_interaction_id="v1_team_a_1")}
    theirs = await two_tenants.post("/v1/jobs", json=chained, headers=b)
    assert theirs.status_code == 422, theirs.text
    assert "previous_interaction_id" in theirs.json()["error"]["message"]
    unknown = {"interaction": body(previous_interaction_id="v1_nobody")}
    assert (await two_tenants.post("/v1/jobs", json=unknown, headers=a)).status_code == 422
    own = await two_tenants.post("/v1/jobs", json=chained, headers=a)
    assert own.status_code == 202, own.text
    lines = [{"custom_id": "c1", **chained}, {"custom_id": "c2", **chained}]
    own_batch = await two_tenants.post("/v1/batches", json={"jobs": lines}, headers=a)
    assert own_batch.status_code == 202, own_batch.text  # a batch line may chain to its own
    theirs_batch = await two_tenants.post(
        "/v1/batches",
        json={"jobs": [{"custom_id": "ok", "interaction": body()}, *lines]},
        headers=b,
    )
    assert theirs_batch.status_code == 422
    err = theirs_batch.json()["error"]
    assert err["code"] == "invalid_batch" and [x["line"] for x in err["lines"]] == [2, 3]
    assert "previous_interaction_id" in err["lines"][0]["error"]


async def test_a_batch_of_many_chained_lines_names_each_foreign_chain(
    two_tenants: httpx.AsyncClient, settings: Settings
) -> None:
    # more lines than one lookup chunk (jobs/domain/batch_ingest.py, CHAIN_CHUNK)
    a, b = KEY_A, KEY_B
    mine = await two_tenants.post("/v1/jobs", json={"interaction": body()}, headers=a)
    theirs = await two_tenants.post("/v1/jobs", json={"interaction": body()}, headers=b)
    named = {"v1_a": mine.json()["id"], "v1_b": theirs.json()["id"]}
    await name_interactions(settings, {**named, "v1_gone": "job_" + "0" * 32})  # purged
    foreign = {700: "v1_b", 1001: "v1_nobody", 1100: "v1_gone", 1150: ""}
    lines = [
        {"custom_id": f"c{n}", "interaction": body(previous_interaction_id=foreign.get(n, "v1_a"))}
        for n in range(1, 1201)
    ]
    rows = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    ndjson = {**a, "content-type": "application/x-ndjson"}
    refused = await two_tenants.post("/v1/batches", content=rows, headers=ndjson)
    assert refused.status_code == 422, refused.text
    err = refused.json()["error"]
    assert [x["line"] for x in err["lines"]] == sorted(foreign)
    assert all("is not an interaction of one of your jobs" in x["error"] for x in err["lines"])
    own = [x for n, x in enumerate(lines, 1) if n not in foreign]
    rows = b"".join(json.dumps(x).encode() + b"\n" for x in own)
    ok = await two_tenants.post("/v1/batches", content=rows, headers=ndjson)
    assert ok.status_code == 202 and ok.json()["total"] == 1200 - len(foreign), ok.text


async def test_forward_setting_lets_an_unknown_field_through(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import create_app
    from jobs import settings as settings_module

    cfg = settings.model_copy(update={"forward_unknown_fields": True})
    # a batch reads the process's settings (validate_lines is given no Settings)
    monkeypatch.setattr(settings_module, "get_settings", lambda: cfg)
    monkeypatch.setattr("jobs.domain.batches.get_settings", lambda: cfg)
    app = create_app(cfg)
    newer = body(generation_config={"temperature": 0.1, "newer_knob": 3}, brand_new={"x": 1})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as client:
            r = await client.post("/v1/jobs", json={"interaction": newer})
            assert r.status_code == 202, r.text
            job = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
            assert job["status"] == "queued"
            r = await client.post(
                "/v1/batches", json={"jobs": [{"custom_id": "n", "interaction": newer}]}
            )
            assert r.status_code == 202, r.text
            # still refused whatever the setting: wrong types and unknown tools
            wrong = body(generation_config={"temperature": "hot"})
            assert (await client.post("/v1/jobs", json={"interaction": wrong})).status_code == 422
