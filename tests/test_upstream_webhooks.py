"""With upstream webhooks on, a completion is seen without waiting for a poll."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from jobs.delivery.signing import generate_secret
from jobs.settings import Settings
from tests.conftest import free_port
from tests.helpers import AppServer, SimServer, job_body, running_worker, wait_terminal


async def test_upstream_webhook_triggers_an_immediate_poll(
    settings: Settings, sim: SimServer
) -> None:
    from api import create_app

    secret = generate_secret()
    port = free_port()
    cfg = settings.model_copy(
        update={
            "public_url": f"http://127.0.0.1:{port}",
            "upstream_webhook_secret": SecretStr(secret),
            # the first poll would come an hour after the create: only the
            # upstream's webhook can make this job finish within the test
            "poll_initial_s": 3600.0,
            "poll_jitter": 0.0,
        }
    )
    sim.state.config.webhook_secret = secret
    server = AppServer(create_app(cfg), port, lifespan="on")
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as api, running_worker(cfg):
            jid = (await api.post("/v1/jobs", json=job_body("x [sim duration=0.5]"))).json()["id"]
            job = (await wait_terminal(api, [jid], timeout=60))[jid]
            assert job["status"] == "completed" and job["poll_count"] == 0
            [hook] = [
                w for w in sim.state.webhook_log if w["interaction_id"] == job["interaction_id"]
            ]
            assert hook["status"] == 204 and hook["type"] == "interaction.completed"

            # a forged event is refused and changes nothing
            r = await api.post(
                "/v1/upstream/webhook",
                content=b'{"type":"interaction.completed","data":{"id":"x"}}',
                headers={
                    "webhook-id": "e",
                    "webhook-timestamp": "1",
                    "webhook-signature": "v1,AAAA",
                },
            )
            assert r.status_code == 400
    finally:
        server.stop()
