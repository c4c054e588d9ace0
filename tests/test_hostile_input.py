"""Hostile input gets a JSON 4xx, stores nothing, and leaves the tenant's
listing working (issue 14, "never answers 500"): ids with a key suffix, JSON
nested deeper than the bounds, a chunked body over the limit. The upstream
webhook's headers are in ``tests/test_upstream_headers.py``, webhook URL forms
in ``tests/test_url_safety_forms.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from jobs.domain import ids
from jobs.domain.requests import MAX_INTERACTION_DEPTH, MAX_METADATA_DEPTH
from jobs.settings import Settings, hash_api_key
from tests.conftest import free_port
from tests.helpers import AppServer, app_client, job_body


def nested(levels: int, leaf: Any = 1) -> Any:
    """``levels`` arrays and objects inside each other, alternating."""
    v = leaf
    for n in range(levels):
        v = [v] if n % 2 else {"k": v}
    return v


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code and err["message"], err
    assert "Traceback" not in r.text
    return err


async def key_lookups(redis: Redis) -> int:
    """Keys Redis has looked up so far (hits + misses): a request that builds
    no key leaves it as it was."""
    stats = await redis.info("stats")
    return int(stats["keyspace_hits"]) + int(stats["keyspace_misses"])


async def assert_nothing_stored(api: httpx.AsyncClient, expected: int = 0) -> None:
    r = await api.get("/v1/jobs")
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == expected


# --------------------------------------------------------------------------- ids


def test_minted_ids_pass_their_own_check_and_no_other() -> None:
    from jobs.domain.lifecycle import new_job

    job = new_job(Settings(), "t", {"model": "m", "input": "x"}, now=0.0)
    assert ids.is_job_id(job.id) and not ids.is_batch_id(job.id) and not ids.is_event_id(job.id)
    hexpart = job.id.removeprefix("job_")
    assert ids.is_batch_id("bat_" + hexpart) and ids.is_event_id("evt_" + hexpart)
    for bad in (job.id + ":events", job.id + "}", job.id.upper(), "job_" + hexpart[:-1], "", None):
        assert not ids.is_job_id(bad), bad


@pytest.fixture()
async def tenants(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """The API with two tenants: the client is tenant a's."""
    keys = {"a": hash_api_key("key-a"), "b": hash_api_key("key-b")}
    cfg = settings.model_copy(update={"api_keys": keys})
    async with app_client(cfg) as api:
        api.headers["authorization"] = "Bearer key-a"
        yield api, cfg


async def test_ids_with_a_key_suffix_are_unknown_ids_and_reach_no_key(
    tenants: tuple[httpx.AsyncClient, Settings],
) -> None:
    api, cfg = tenants
    jid = (await api.post("/v1/jobs", json=job_body("x"))).json()["id"]
    bid = (await api.post("/v1/batches", json={"jobs": [job_body("y", custom_id="1")]})).json()[
        "id"
    ]
    theirs = (
        await api.post(
            "/v1/batches",
            json={"jobs": [job_body("z", custom_id="1")]},
            headers={"authorization": "Bearer key-b"},
        )
    ).json()["id"]
    eid = "evt_" + jid.removeprefix("job_")
    hostile = [
        ("GET", f"/v1/jobs/{jid}:events"),
        ("GET", f"/v1/jobs/{jid}%7D:events"),
        ("GET", f"/v1/jobs/{jid}:events/deliveries"),
        ("POST", f"/v1/jobs/{jid}:events/cancel"),
        ("DELETE", f"/v1/jobs/{jid}:events"),
        ("GET", f"/v1/batches/{bid}:jobs"),
        ("GET", f"/v1/batches/{bid}:counts"),
        ("GET", f"/v1/batches/{bid}:jobs/results"),
        ("POST", f"/v1/batches/{bid}:jobs/cancel"),
        ("GET", f"/v1/jobs?batch_id={bid}:jobs"),
        ("GET", f"/v1/batches/{theirs}:jobs"),
        ("POST", f"/v1/webhooks/events/{eid}:attempts/redeliver"),
        ("GET", "/v1/jobs/" + "x" * 10_000),
        ("GET", "/v1/jobs/%00"),
    ]
    redis = Redis.from_url(cfg.effective_redis_url)
    try:
        for method, path in hostile:
            before = await key_lookups(redis)
            err = assert_error(await api.request(method, path), 404, "not_found")
            assert await key_lookups(redis) == before, f"{method} {path} built a key"
            assert len(err["message"]) < 100  # a long id is not echoed whole
        # the probe works: an id of the right form is looked up (and unknown)
        before = await key_lookups(redis)
        assert_error(await api.get("/v1/jobs/job_" + "0" * 32), 404, "not_found")
        assert await key_lookups(redis) > before
    finally:
        await redis.aclose()
    # another tenant's batch is as unknown as a batch that never was
    mine_unknown = assert_error(await api.get("/v1/batches/bat_" + "0" * 32), 404, "not_found")
    other = assert_error(await api.get(f"/v1/batches/{theirs}"), 404, "not_found")
    assert other["message"].replace(theirs, "X") == mine_unknown["message"].replace(
        "bat_" + "0" * 32, "X"
    )
    assert (await api.get(f"/v1/jobs/{jid}")).status_code == 200
    assert (await api.get(f"/v1/batches/{bid}")).status_code == 200
    await assert_nothing_stored(api, expected=2)  # the job and the batch's one job


# --------------------------------------------------------------------------- nesting


async def test_metadata_nested_too_deep_is_refused_and_the_listing_still_works(
    api: httpx.AsyncClient,
) -> None:
    for levels in (MAX_METADATA_DEPTH + 1, 255, 300, 900):
        r = await api.post("/v1/jobs", json=job_body("x", metadata=nested(levels)))
        err = assert_error(r, 422, "invalid_request")
        assert f"nested more than {MAX_METADATA_DEPTH} levels" in err["message"]
        assert err["details"][0]["loc"][:2] == ["body", "metadata"]
    await assert_nothing_stored(api)
    r = await api.post("/v1/jobs", json=job_body("x", metadata=nested(MAX_METADATA_DEPTH)))
    assert r.status_code == 202, r.text
    assert (await api.get(f"/v1/jobs/{r.json()['id']}")).status_code == 200
    await assert_nothing_stored(api, expected=1)


async def test_batch_metadata_nested_too_deep_is_refused(api: httpx.AsyncClient) -> None:
    for levels in (MAX_METADATA_DEPTH + 1, 300):
        body = {"jobs": [job_body("x", custom_id="1")], "metadata": nested(levels)}
        assert_error(await api.post("/v1/batches", json=body), 422, "invalid_request")
    await assert_nothing_stored(api)


async def test_a_batch_lines_metadata_and_interaction_are_bounded_as_a_jobs(
    api: httpx.AsyncClient,
) -> None:
    deep_meta = job_body("x", custom_id="a", metadata=nested(MAX_METADATA_DEPTH + 1))
    deep_inter = job_body("y", custom_id="b")
    deep_inter["interaction"]["generation_config"] = nested(MAX_INTERACTION_DEPTH)
    fine = job_body("z", custom_id="c", metadata=nested(MAX_METADATA_DEPTH))
    body = b"".join(json.dumps(x).encode() + b"\n" for x in (fine, deep_meta, deep_inter))
    r = await api.post(
        "/v1/batches", content=body, headers={"content-type": "application/x-ndjson"}
    )
    err = assert_error(r, 422, "invalid_batch")
    assert [x["line"] for x in err["lines"]] == [2, 3]
    assert f"nested more than {MAX_METADATA_DEPTH} levels" in err["lines"][0]["error"]
    assert f"nested more than {MAX_INTERACTION_DEPTH} levels" in err["lines"][1]["error"]
    await assert_nothing_stored(api)


async def test_interaction_and_continue_input_nested_too_deep_are_refused(
    api: httpx.AsyncClient,
) -> None:
    deep = nested(MAX_INTERACTION_DEPTH)  # the interaction itself is one level more
    body = {"interaction": {"model": "sim-model", "input": "x", "response_format": deep}}
    err = assert_error(await api.post("/v1/jobs", json=body), 422, "invalid_request")
    assert f"nested more than {MAX_INTERACTION_DEPTH} levels" in err["message"]
    body["interaction"]["response_format"] = nested(300)
    assert_error(await api.post("/v1/jobs", json=body), 422, "invalid_request")
    item = {"type": "text", "text": "x", "extra": nested(MAX_INTERACTION_DEPTH)}
    r = await api.post(f"/v1/jobs/job_{'0' * 32}/continue", json={"input": [item]})
    assert "nested more than" in assert_error(r, 422, "invalid_request")["message"]
    await assert_nothing_stored(api)


async def test_a_body_too_deep_for_the_json_parser_is_a_4xx(api: httpx.AsyncClient) -> None:
    levels = 100_000
    raw = '{"interaction": {"model": "m", "input": "x"}, "metadata": ' + "[" * levels
    raw += "]" * levels + "}"
    r = await api.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request")
    await assert_nothing_stored(api)


# --------------------------------------------------------------------------- body size


def chunks(total: int, size: int = 4096) -> Any:
    async def gen() -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            yield b" " * min(size, total - sent)
            sent += size

    return gen()


@pytest.fixture()
def small(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_body_bytes": 10_000, "max_batch_bytes": 20_000})


async def test_a_chunked_body_over_the_limit_is_413_like_a_sized_one(small: Settings) -> None:
    async with app_client(small) as api:
        sized = await api.post("/v1/jobs", content=b" " * 10_001)
        want = assert_error(sized, 413, "body_too_large")
        r = await api.post("/v1/jobs", content=chunks(50_000))
        assert "content-length" not in r.request.headers
        assert assert_error(r, 413, "body_too_large") == want
        ndjson = {"content-type": "application/x-ndjson"}
        r = await api.post("/v1/batches", content=chunks(50_000), headers=ndjson)
        assert_error(r, 413, "body_too_large")
        r = await api.post("/v1/batches", content=chunks(50_000))  # as JSON
        assert_error(r, 413, "body_too_large")
        await assert_nothing_stored(api)
        ok = json.dumps(job_body("x")).encode()
        as_json = {"content-type": "application/json"}
        r = await api.post("/v1/jobs", content=chunks_of(ok), headers=as_json)  # within the limit
        assert r.status_code == 202, r.text


def chunks_of(data: bytes) -> Any:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    return gen()


async def test_a_chunked_body_over_the_limit_is_413_through_uvicorn(small: Settings) -> None:
    from api import create_app

    server = AppServer(create_app(small), free_port(), lifespan="on")
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as api:
            r = await api.post("/v1/jobs", content=chunks(50_000))
            assert r.request.headers["transfer-encoding"] == "chunked"
            assert_error(r, 413, "body_too_large")
            await assert_nothing_stored(api)
    finally:
        server.stop()


# --------------------------------------------------------------------------- the 500


async def test_an_unexpected_error_is_a_json_500_and_only_the_log_has_the_traceback(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from api import create_app

    async def broken() -> None:
        raise ValueError("a detail only the log may show")

    app = create_app(settings)
    app.add_api_route("/v1/_broken", broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as api:
            with caplog.at_level("ERROR", logger="interq.api"):
                r = await api.get("/v1/_broken")
            err = assert_error(r, 500, "internal")
            assert "a detail" not in r.text and r.headers["x-request-id"] == err["request_id"]
            [rec] = [x for x in caplog.records if x.name == "interq.api" and x.exc_info]
            assert err["request_id"] in rec.getMessage()
            assert "a detail only the log may show" in caplog.text and "Traceback" in caplog.text
            await assert_nothing_stored(api)
