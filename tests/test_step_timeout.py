"""A step that runs past its time budget is retried, never dropped: arq treats
its own timeout as final, so interq's steps time themselves out first."""

from __future__ import annotations

import asyncio
import json

import httpx

from jobs.settings import Settings
from tests.helpers import job_body, running_worker, wait_terminal


class HangsOnce:
    """An upstream whose first create never answers (within any step budget);
    the second is answered, and the interaction is complete at once."""

    def __init__(self) -> None:
        self.creates = 0
        self.job = ""

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.creates += 1
            self.job = json.loads(request.content)["labels"]["interq_job"]
            if self.creates == 1:
                await asyncio.sleep(3600)
            return httpx.Response(200, json={"id": "int_1", "status": "in_progress"})
        return httpx.Response(
            200,
            json={
                "id": "int_1",
                "status": "completed",
                "labels": {"interq_job": self.job},
                "steps": [{"type": "model_output", "content": [{"type": "text", "text": "hi"}]}],
            },
        )


async def test_a_step_past_its_timeout_is_retried(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    up = HangsOnce()
    cfg = settings.model_copy(update={"step_timeout_s": 2.0, "create_timeout_s": 3600.0})
    async with running_worker(cfg, _transport=httpx.MockTransport(up.handler)) as w:
        jid = (await api.post("/v1/jobs", json=job_body("x"))).json()["id"]
        job = (await wait_terminal(api, [jid], timeout=60))[jid]
        assert w.jobs_failed == 0  # arq never saw a step fail
    assert job["status"] == "completed"
    assert up.creates == 2
    # the hung create may have reached the upstream: the re-send is flagged
    assert job["possible_duplicate"] is True
