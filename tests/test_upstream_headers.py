"""``POST /v1/upstream/webhook`` parses every header and the body defensively:
whatever a caller sends (no secret needed to send it) is a 400
``invalid_webhook`` JSON error, never a 500."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from jobs.delivery import signing
from jobs.settings import Settings
from tests.helpers import app_client

SECRET = signing.generate_secret()
EVENT = json.dumps({"type": "interaction.completed", "data": {"id": "int_x"}}).encode()


@pytest.fixture()
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Both kinds configured: the secret, and a public URL (the JWT audience)."""
    cfg = settings.model_copy(
        update={"upstream_webhook_secret": SecretStr(SECRET), "public_url": "http://interq"}
    )
    async with app_client(cfg) as client:
        yield client


def signed(body: bytes = EVENT, msg_id: str = "msg_1", ts: int | None = None) -> dict[str, str]:
    return signing.headers_for(SECRET, msg_id, body, timestamp=ts)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(api: httpx.AsyncClient, headers: dict[str, str | bytes], body: bytes) -> None:
    r = await api.post("/v1/upstream/webhook", content=body, headers=headers)
    assert r.status_code == 400, (headers, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "invalid_webhook"


async def test_a_well_signed_event_is_accepted(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/upstream/webhook", content=EVENT, headers=signed())
    assert r.status_code == 204, r.text


@pytest.mark.parametrize(
    "ts",
    [
        "9" * 400,  # an int, but no float: abs(time.time() - ts) raised OverflowError
        "1" * 5000,  # past Python's int() digit limit
        "\uff11\uff17\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10",  # full-width digits
        "-1",
        "1e9",
        "0x10",
        " ",
        "1_700_000_000",
    ],
)
async def test_a_bad_timestamp_is_400(api: httpx.AsyncClient, ts: str) -> None:
    headers: dict[str, str | bytes] = {**signed(), "webhook-timestamp": ts.encode("utf-8")}
    await refused(api, headers, EVENT)


async def test_a_signature_for_a_400_digit_timestamp_is_400(api: httpx.AsyncClient) -> None:
    huge = 10**400
    headers: dict[str, str | bytes] = {**signed(ts=huge)}
    await refused(api, headers, EVENT)


async def test_bad_ids_and_signatures_are_400(api: httpx.AsyncClient) -> None:
    now = str(int(time.time()))
    good = signed()
    cases: list[dict[str, str | bytes]] = [
        {**good, "webhook-signature": "v1,\xe9\xff\x00".encode("latin-1")},
        {**good, "webhook-signature": ("v1,\xe9 " * 2000).encode("latin-1")},
        {**good, "webhook-signature": " ".join(["v1,AAAA"] * 5000)},
        {**good, "webhook-signature": "v2,whatever"},
        {**good, "webhook-id": "\xe9\xff".encode("latin-1")},
        {**good, "webhook-id": ""},
        {"webhook-timestamp": now, "webhook-signature": good["webhook-signature"]},
        {},
    ]
    for headers in cases:
        await refused(api, headers, EVENT)


async def test_bad_jwt_headers_are_400(api: httpx.AsyncClient) -> None:
    tail = "." + b64(b"{}") + "." + b64(b"sig")
    for header in (
        b"[" * 5000,  # too deep for the JSON parser
        b"[1, 2]",
        b"not json",
        b'{"alg": "RS256", "kid": 5}',
        b'{"alg": "none", "kid": "k"}',
        b"\xff\xfe",
    ):
        await refused(api, {"webhook-signature": b64(header) + tail}, EVENT)
    await refused(api, {"webhook-signature": "a.b.c"}, EVENT)
    await refused(api, {"webhook-signature": "Bearer \xe9.\xe9.\xe9".encode("latin-1")}, EVENT)


async def test_a_well_signed_but_hostile_body_is_400(api: httpx.AsyncClient) -> None:
    deep = b'{"data": {"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    for body in (
        deep,
        b'{"data": {"id": ["x"]}}',
        b'{"data": {"id": ""}}',
        b'{"data": "x"}',
        b"[]",
        b"\xff",
    ):
        await refused(api, dict(signed(body)), body)


async def test_without_any_kind_configured_it_is_404_json(settings: Settings) -> None:
    async with app_client(settings) as api:
        headers = {**signed(), "webhook-timestamp": "9" * 400}
        r = await api.post("/v1/upstream/webhook", content=EVENT, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_a_blank_secret_is_no_secret(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a compose file passing INTERQ_UPSTREAM_WEBHOOK_SECRET through unset gives ""
    monkeypatch.setenv("INTERQ_UPSTREAM_WEBHOOK_SECRET", "")
    monkeypatch.setenv("GEMINI_API_KEY", " ")
    cfg = Settings()
    assert cfg.upstream_webhook_secret is None and cfg.gemini_api_key is None
    blank = settings.model_copy(update={"upstream_webhook_secret": cfg.upstream_webhook_secret})
    async with app_client(blank) as api:
        # signed with an empty key, as anyone could: not a configured kind at all
        key = "whsec_" + base64.b64encode(b"").decode()
        headers = signing.headers_for(key, "msg_1", EVENT)
        r = await api.post("/v1/upstream/webhook", content=EVENT, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
