"""Webhooks people can trust: verification with the standardwebhooks library,
rotation, retries, dead letters and redelivery, and URL safety."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobs.delivery import url_safety
from jobs.delivery.signing import generate_secret, headers_for
from jobs.delivery.url_safety import Policy, UnsafeURL
from jobs.settings import Settings
from tests.helpers import (
    Receiver,
    job_body,
    running_worker,
    settled_event,
    wait_terminal,
    wait_until,
)


def test_library_rejects_tampered_body_and_stale_timestamp() -> None:
    secret = generate_secret()
    body = b'{"type":"job.completed","data":{"id":"job_1"}}'
    good = headers_for(secret, "evt_1", body)
    Webhook(secret).verify(body, good)  # accepted
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"job_1", b"job_2"), good)
    stale = headers_for(secret, "evt_1", body, timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, good)


def test_rotation_signs_with_both_secrets() -> None:
    old, new = generate_secret(), generate_secret()
    body = b"{}"
    h = headers_for([new, old], "evt_2", body)
    assert len(h["webhook-signature"].split()) == 2
    Webhook(old).verify(body, h)
    Webhook(new).verify(body, h)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.64.1.1/hook",
        "http://224.0.0.1/hook",
        "http://0.0.0.0/hook",
        "http://localhost:9000/hook",  # a name that resolves to a private address
    ],
)
async def test_private_destinations_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        await url_safety.resolve(url, Policy())


async def test_public_and_allowlisted_destinations_pass() -> None:
    import ipaddress

    assert str(await url_safety.resolve("https://93.184.216.34/x", Policy())) == "93.184.216.34"
    allowed = Policy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    assert str(await url_safety.resolve("http://127.0.0.1:1/x", allowed)) == "127.0.0.1"
    for bad in ("ftp://example.com/x", "http://user:pw@example.com/", "not a url"):
        with pytest.raises(UnsafeURL):
            await url_safety.resolve(bad, Policy())


async def test_api_refuses_unsafe_webhook_url(settings: Settings) -> None:
    from api import create_app

    app = create_app(settings.model_copy(update={"webhook_allow_private": False}))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as api:
            body = job_body("x", webhook="http://169.254.169.254/latest")
            r = await api.post("/v1/jobs", json=body)
            assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_webhook_url"
            r = await api.put("/v1/webhook-endpoint", json={"url": "http://10.0.0.1/x"})
            assert r.status_code == 422


class Redirector:
    """Answers a POST to /hook with a redirect to /internal; counts what reaches
    /internal (a client that follows redirects would)."""

    def __init__(self) -> None:
        self.internal_hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/hook":
                    outer.internal_hits += 1
                self.send_response(302 if self.path == "/hook" else 204)
                self.send_header("Location", f"http://127.0.0.1:{outer.port}/internal")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


async def test_redirects_are_not_followed(api: httpx.AsyncClient, worker: None) -> None:
    red = Redirector()
    try:
        body = job_body("x [sim duration=0.1]")
        body["webhook"] = {"url": f"http://127.0.0.1:{red.port}/hook", "secret": generate_secret()}
        jid = (await api.post("/v1/jobs", json=body)).json()["id"]
        await wait_terminal(api, [jid])

        async def first_attempt() -> list[dict[str, Any]]:
            d = (await api.get(f"/v1/jobs/{jid}/deliveries")).json()["data"]
            return d if d and d[0]["attempt_log"] else []

        [event] = await wait_until(first_attempt, what="a delivery attempt")
        assert event["attempt_log"][0]["status_code"] == 302
        assert event["attempt_log"][0]["outcome"] == "failed"
        assert red.internal_hits == 0  # nothing ever reached /internal
    finally:
        red.httpd.shutdown()


async def test_receiver_down_then_up_same_id_then_dead_letter_and_redeliver(
    api: httpx.AsyncClient, settings: Settings, receiver: Receiver
) -> None:
    secret = generate_secret()
    receiver.secret = secret
    receiver.fail_first = 2  # down for the first two attempts
    body = job_body("x [sim duration=0.1]")
    body["webhook"] = {"url": receiver.url, "secret": secret}
    async with running_worker(settings):
        jid = (await api.post("/v1/jobs", json=body)).json()["id"]
        [d] = await wait_until(receiver.snapshot, what="third attempt delivered")
        assert receiver.requests == 3 and d.verified
        # the attempt log is written before the event's state: wait for the state
        log = await settled_event(api, jid)
        assert [a["outcome"] for a in log["attempt_log"]] == ["failed", "failed", "delivered"]
        assert log["id"] == d.msg_id and log["state"] == "delivered"

        # a receiver that never answers 2xx: the schedule (3 retries) runs out
        receiver.fail_first = 10**6
        body2 = job_body("y [sim duration=0.1]")
        body2["webhook"] = {"url": receiver.url, "secret": secret}
        jid2 = (await api.post("/v1/jobs", json=body2)).json()["id"]

        async def dead() -> list[dict[str, Any]]:
            return (await api.get("/v1/webhooks/dead-letters")).json()["data"]

        [ev] = await wait_until(dead, timeout=60, what="dead letter")
        assert ev["attempts"] == len(settings.webhook_schedule_s) + 1
        receiver.fail_first = 0
        r = await api.post(f"/v1/webhooks/events/{ev['id']}/redeliver")
        assert r.status_code == 202
        got = await wait_until(
            lambda: [x for x in receiver.snapshot() if x.body["data"]["id"] == jid2],
            what="redelivered",
        )
        assert got[0].msg_id == ev["id"] and got[0].verified
        assert (await dead()) == []


async def test_tenant_endpoint_and_rotation(
    api: httpx.AsyncClient, worker: None, receiver: Receiver
) -> None:
    r = await api.put("/v1/webhook-endpoint", json={"url": receiver.url})
    assert r.status_code == 200
    first = r.headers["X-Webhook-Secret"]
    receiver.secret = first
    jid = (await api.post("/v1/jobs", json=job_body("a [sim duration=0.1]"))).json()["id"]
    await wait_until(lambda: len(receiver.snapshot()) >= 1, what="default endpoint delivery")
    assert receiver.snapshot()[0].verified and receiver.snapshot()[0].body["data"]["id"] == jid

    rot = await api.post("/v1/webhook-endpoint/rotate")
    second = rot.headers["X-Webhook-Secret"]
    assert second != first and rot.json()["rotating_until"] > time.time()
    jid2 = (await api.post("/v1/jobs", json=job_body("b [sim duration=0.1]"))).json()["id"]
    await wait_until(lambda: len(receiver.snapshot()) >= 2, what="delivery after rotation")
    d = receiver.snapshot()[1]
    assert d.body["data"]["id"] == jid2
    assert d.verified  # the receiver still holds the old secret
    raw = json.dumps(d.body, separators=(",", ":")).encode()
    Webhook(second).verify(raw, d.headers)  # and the new one verifies too


@pytest.fixture()
async def tenants(
    settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """Two tenants; ``indirect`` parametrization sets the per-tenant request rate."""
    from api import create_app
    from jobs.settings import hash_api_key

    cfg = settings.model_copy(
        update={
            "api_keys": {"a": hash_api_key("key-a"), "b": hash_api_key("key-b")},
            "tenant_requests_per_s": getattr(request, "param", 50),
        }
    )
    app = create_app(cfg)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            yield c


async def test_tenants_are_isolated(tenants: httpx.AsyncClient) -> None:
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    jid = (await tenants.post("/v1/jobs", json=job_body("mine"), headers=a)).json()["id"]
    assert (await tenants.get(f"/v1/jobs/{jid}", headers=a)).status_code == 200
    for method, path in [
        ("GET", f"/v1/jobs/{jid}"),
        ("GET", f"/v1/jobs/{jid}/result"),
        ("GET", f"/v1/jobs/{jid}/deliveries"),
        ("POST", f"/v1/jobs/{jid}/cancel"),
    ]:
        r = await tenants.request(method, path, headers=b)
        assert r.status_code == 404, (method, path, r.status_code)
    assert (await tenants.get("/v1/jobs", headers=b)).json()["data"] == []
    assert (
        await tenants.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (await tenants.get("/v1/jobs")).status_code == 401


@pytest.mark.parametrize("tenants", [2], indirect=True)
async def test_tenant_request_rate_limit(tenants: httpx.AsyncClient) -> None:
    a = {"Authorization": "Bearer key-a"}
    codes = [(await tenants.get("/v1/jobs", headers=a)) for _ in range(20)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, "20 requests in under 10 s must pass a 2/s limit"
    assert limited[0].headers["Retry-After"] == "1"
    assert limited[0].json()["error"]["code"] == "rate_limited"
    b = {"Authorization": "Bearer key-b"}
    assert (await tenants.get("/v1/jobs", headers=b)).status_code == 200  # others unaffected
