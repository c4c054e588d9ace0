"""Simulator tests: the outgoing webhooks (events, signing, retries, shutdown)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette

from jobs.dev.simulator.app import (
    SimConfig,
    create_app,
)
from tests.test_simulator import (
    D,
    create,
)
from tests.test_simulator_transport import SECRET, running


def jwt_claims(token: str, jwks: dict[str, Any], aud: str) -> dict[str, Any] | None:
    """The claims of a per-request delivery's JWT verified with the simulator's
    key set, or None."""
    try:
        key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=["RS256"], audience=aud, options={"require": ["exp"]}
        )
    except (jwt.PyJWTError, KeyError):
        return None
    return claims


class Receiver:
    """A loopback webhook receiver (a thread) that verifies every delivery:
    a JWT in ``webhook-signature`` with ``jwks`` (a per-request delivery, its
    ``aud`` this receiver's URL), else with the ``standardwebhooks`` library;
    answers 500 to the first ``fail_first`` requests, then 204 (400 when
    verification fails)."""

    def __init__(
        self, secret: str | None = SECRET, fail_first: int = 0, jwks: dict[str, Any] | None = None
    ) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        recv = self

        def check(raw: bytes, headers: dict[str, str]) -> tuple[bool, dict[str, Any] | None]:
            sig = headers.get("webhook-signature", "")
            if jwks is not None and sig.count(".") == 2 and "," not in sig:
                claims = jwt_claims(sig, jwks, recv.url)
                return claims is not None, claims
            try:
                Webhook(secret or "whsec_AAAA").verify(raw, headers)
            except WebhookVerificationError:
                return False, None
            return secret is not None, None

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, claims = check(raw, headers)
                with recv.lock:
                    answer = 500 if len(recv.deliveries) < fail_first else 204
                    if (secret is not None or jwks is not None) and not verified:
                        answer = 400
                    recv.deliveries.append(
                        {"headers": headers, "body": json.loads(raw), "verified": verified}
                        | {"answer": answer, "claims": claims}
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


def sim_jwks(app: Starlette) -> dict[str, Any]:
    jwks: dict[str, Any] = app.state.sim.webhooks.key.jwks()
    return jwks


def hooked(uri: str, **meta: Any) -> dict[str, Any]:
    return {"webhook_config": {"uris": [uri], "user_metadata": meta}}


@pytest.mark.asyncio
async def test_webhook_completed_arrives_without_polling() -> None:
    app = create_app(SimConfig(duration_s=D, webhook_secret=SECRET))
    sim = app.state.sim
    with Receiver(jwks=sim_jwks(app)) as recv:
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
    # per-request: a JWT with the simulator's key, for this URI and interaction
    claims = d["claims"]
    assert claims["aud"] == recv.url and claims["sub"] == iid
    assert claims["jti"] == d["headers"]["webhook-id"] and claims["exp"] == claims["iat"] + 300
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
    with Receiver(jwks=sim_jwks(app)) as recv:
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
    with Receiver(jwks=sim_jwks(app)) as recv:
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
    static, unsigned = Receiver(), Receiver(secret=None)
    with static, Receiver(jwks=sim_jwks(app)) as dynamic, unsigned:
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
    # the per-request one carries a JWT, the project-level ones the HMAC
    assert dynamic.got()[0]["claims"]["sub"] == d
    assert all(x["claims"] is None for x in static.got())


@pytest.mark.asyncio
async def test_webhook_jwks_and_configured_audience() -> None:
    aud = "https://interq.example/v1/upstream/webhook"
    cfg = SimConfig(duration_s=0.0, webhook_retry_s=[])
    app = create_app(cfg)
    with Receiver(jwks=sim_jwks(app)) as recv:
        async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
            jwks = (await c.get("/.well-known/jwks.json")).json()
            [key] = jwks["keys"]
            assert jwks == sim_jwks(app) and key["kty"] == "RSA" and key["alg"] == "RS256"
            assert "d" not in key  # the public half only
            for bad in ({"webhook_audience": 5}, {"webhook_token_ttl_s": "x"}):
                assert (await c.post("/_sim/config", json=bad)).status_code == 400
            new = {"webhook_audience": aud, "webhook_token_ttl_s": 60}
            assert (await c.post("/_sim/config", json=new)).status_code == 200
            iid = (await create(c, "aud", **hooked(recv.url))).json()["id"]
            await until(lambda: recv.got(), "the event")
            await quiesce(app)
    [d] = recv.got()
    assert not d["verified"] and d["answer"] == 400  # not for this receiver's URL
    claims = jwt_claims(d["headers"]["webhook-signature"], jwks, aud)
    assert claims is not None and claims["sub"] == iid
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(d["headers"]["webhook-signature"])["kid"] == key["kid"]


@pytest.mark.asyncio
async def test_webhook_retry_keeps_webhook_id() -> None:
    # faults never apply to outgoing webhooks
    cfg = SimConfig(duration_s=D, webhook_secret=SECRET, fault_5xx=1.0, fault_ops={"get"})
    app = create_app(cfg)
    sim = app.state.sim
    with Receiver(fail_first=2, jwks=sim_jwks(app)) as recv:
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
