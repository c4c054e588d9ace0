"""With upstream webhooks on, a completion is seen without waiting for a poll:
per-request deliveries (the simulator signs them with its own RSA key as an
RS256 JWT and serves its JWKS, as the API does) and project-level ones
(Standard Webhooks HMAC). A delivery that fails its check gets 400 and changes
nothing."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from jobs.delivery.signing import generate_secret, headers_for
from jobs.settings import Settings
from jobs.storage.keys import Keys
from tests.conftest import free_port
from tests.helpers import AppServer, SimServer, job_body, running_worker, wait_terminal, wait_until

HOUR = 3600.0


@asynccontextmanager
async def interq(settings: Settings, **update: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The API (with INTERQ_PUBLIC_URL, so creates name its webhook) and a
    worker whose polls are an hour apart: only a webhook can end a job soon."""
    from api import create_app

    port = free_port()
    cfg = settings.model_copy(
        update={
            "public_url": f"http://127.0.0.1:{port}",
            "poll_initial_s": HOUR,
            "poll_max_s": HOUR,
            "poll_jitter": 0.0,
            **update,
        }
    )
    server = AppServer(create_app(cfg), port, lifespan="on")
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as api, running_worker(cfg):
            yield api
    finally:
        server.stop()


async def started(api: httpx.AsyncClient, text: str) -> dict[str, Any]:
    jid = (await api.post("/v1/jobs", json=job_body(text))).json()["id"]

    async def running() -> Any:
        job = (await api.get(f"/v1/jobs/{jid}")).json()
        return job if job["status"] == "running" and job["interaction_id"] else None

    job: dict[str, Any] = await wait_until(running, timeout=30, what="the job running")
    return job


def hooks_for(sim: SimServer, iid: str) -> list[dict[str, Any]]:
    return [w for w in sim.state.webhook_log if w["interaction_id"] == iid]


async def test_a_jwt_signed_per_request_webhook_completes_the_job(
    settings: Settings, sim: SimServer
) -> None:
    # no secret: per-request deliveries need only the audience (from the public
    # URL) and the JWKS (from the upstream URL, here the simulator's)
    async with interq(settings) as api:
        jid = (await api.post("/v1/jobs", json=job_body("x [sim duration=0.5]"))).json()["id"]
        job = (await wait_terminal(api, [jid], timeout=60))[jid]
    assert job["status"] == "completed" and job["poll_count"] == 0
    [hook] = hooks_for(sim, job["interaction_id"])
    assert hook["status"] == 204 and hook["type"] == "interaction.completed"


def token(key: Any, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iat": now, "exp": now + 300} | claims
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, "RS256", {"kid": kid})


async def test_forged_expired_unknown_kid_and_wrong_audience_tokens_change_nothing(
    settings: Settings, sim: SimServer
) -> None:
    async with interq(settings) as api:
        job = await started(api, "long [sim duration=600]")
        iid, aud = job["interaction_id"], str(api.base_url).rstrip("/") + "/v1/upstream/webhook"
        body = json.dumps({"type": "interaction.completed", "data": {"id": iid}}).encode()
        key, kid = sim.state.webhooks.key.private, sim.state.webhooks.key.kid
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        bad = {
            "forged": token(other, kid, aud=aud, sub=iid),
            "expired": token(key, kid, aud=aud, sub=iid, iat=now - 7200, exp=now - HOUR),
            "unknown kid": token(key, "sim-unknown", aud=aud, sub=iid),
            "wrong audience": token(key, kid, aud="https://elsewhere/v1/upstream/webhook"),
            "no exp": token(key, kid, aud=aud, exp=None),
            "not a JWT": "v1,AAAA",  # HMAC-shaped, and no secret is configured
        }
        r = aioredis.Redis.from_url(settings.effective_redis_url)
        polls = Keys(settings.key_prefix).polls
        due = await r.zscore(polls, job["id"])
        assert due is not None and due > (time.time() + HOUR - 60) * 1000
        try:
            for what, sig in bad.items():
                headers = {"webhook-id": "evt_x", "webhook-timestamp": str(now)}
                resp = await api.post(
                    "/v1/upstream/webhook",
                    content=body,
                    headers=headers | {"webhook-signature": sig},
                )
                assert resp.status_code == 400, what
                assert resp.json()["error"]["code"] == "invalid_webhook", what
                assert await r.zscore(polls, job["id"]) == due, what
            after = (await api.get(f"/v1/jobs/{job['id']}")).json()
            assert after["status"] == "running" and after["poll_count"] == 0
            # the same delivery with a genuine token brings the poll forward
            good = token(key, kid, aud=aud, sub=iid)
            resp = await api.post(
                "/v1/upstream/webhook", content=body, headers={"webhook-signature": good}
            )
            assert resp.status_code == 204

            async def polled() -> bool:
                return bool((await api.get(f"/v1/jobs/{job['id']}")).json()["poll_count"] == 1)

            await wait_until(polled, timeout=30, what="the poll brought forward")
        finally:
            await r.aclose()


async def test_project_level_hmac_webhook_still_works(settings: Settings, sim: SimServer) -> None:
    secret = generate_secret()
    # the simulator's own per-request deliveries name another audience: refused
    sim.state.config.webhook_audience = "https://elsewhere/v1/upstream/webhook"
    async with interq(settings, upstream_webhook_secret=SecretStr(secret)) as api:
        job = await started(api, "x [sim duration=0.3]")
        iid = job["interaction_id"]
        await wait_until(lambda: len(hooks_for(sim, iid)) == 4, timeout=30, what="4 attempts")
        assert {h["status"] for h in hooks_for(sim, iid)} == {400}
        assert (await api.get(f"/v1/jobs/{job['id']}")).json()["status"] == "running"

        body = json.dumps({"type": "interaction.completed", "data": {"id": iid}}).encode()
        forged = {"webhook-id": "e", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}
        r = await api.post("/v1/upstream/webhook", content=body, headers=forged)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_webhook"
        # a project-level delivery, signed with the secret
        headers = headers_for(secret, "evt_static", body)
        assert (
            await api.post("/v1/upstream/webhook", content=body, headers=headers)
        ).status_code == 204
        done = (await wait_terminal(api, [job["id"]], timeout=30))[job["id"]]
    assert done["status"] == "completed" and done["poll_count"] == 0
