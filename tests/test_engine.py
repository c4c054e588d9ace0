"""The poll engine through a worker: errors counted as errors over hundreds
of polls, results attached only with the job's label, in-flight accounting
after /continue. (A receiver that never answers delaying only its own events
is shown on a fake clock in ``tests/test_clocked_steps.py``.)"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from jobs.observe import metrics
from jobs.settings import Settings
from jobs.storage.keys import Keys
from tests.helpers import (
    SimServer,
    job_body,
    running_worker,
    wait_terminal,
    wait_until,
)

POLLS_BEFORE_END = 220
INJECT_EVERY = 20


@dataclass
class LongInteraction:
    """An upstream (an httpx transport) whose one interaction answers
    ``in_progress`` for ``POLLS_BEFORE_END`` answered polls, then
    ``completed``; every ``INJECT_EVERY`` GETs it injects a junk answer (a
    cut-off JSON body, an HTML 502 page, a body without ``status``) and an
    unexpected error (the transport raises)."""

    job_id: str = ""
    answered: int = 0
    gets: int = 0
    injected: list[str] = field(default_factory=list)
    end_noticed_at_get: int | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.job_id = json.loads(request.content)["labels"]["interq_job"]
            return httpx.Response(200, json={"id": "int_long", "status": "in_progress"})
        self.gets += 1
        if self.gets % INJECT_EVERY == 0:
            kind = ["cut_json", "html_502", "no_status", "raise"][len(self.injected) % 4]
            self.injected.append(kind)
            if kind == "cut_json":
                return httpx.Response(200, content=b'{"id": "int_long", "status": "in_pro')
            if kind == "html_502":
                return httpx.Response(502, content=b"<html><body>Bad Gateway</body></html>")
            if kind == "no_status":
                return httpx.Response(200, json={"id": "int_long"})
            raise RuntimeError("injected: a bug in the transport")
        self.answered += 1
        done = self.answered > POLLS_BEFORE_END
        if done and self.end_noticed_at_get is None:
            self.end_noticed_at_get = self.gets
        body: dict[str, Any] = {
            "id": "int_long",
            "status": "completed" if done else "in_progress",
            "labels": {"interq_job": self.job_id},
        }
        if done:
            body["steps"] = [{"type": "model_output", "content": [{"type": "text", "text": "ok"}]}]
        return httpx.Response(200, json=body)


@pytest.fixture()
def fast(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"poll_initial_s": 0.005, "poll_max_s": 0.01, "retry_initial_s": 0.005,
                "retry_max_s": 0.02}
    )  # fmt: skip


async def test_hundreds_of_polls_with_faults_end_on_the_first_completed_answer(
    api: httpx.AsyncClient, fast: Settings
) -> None:
    up = LongInteraction()
    async with running_worker(fast, _transport=httpx.MockTransport(up.handler)):
        jid = (await api.post("/v1/jobs", json=job_body("long"))).json()["id"]
        job = (await wait_terminal(api, [jid], timeout=120))[jid]
    assert job["status"] == "completed", job
    assert job["output_text"] == "ok"
    assert job["poll_count"] >= 200
    kinds = set(up.injected)
    assert {"cut_json", "html_502", "no_status", "raise"} <= kinds, up.injected
    assert len(up.injected) >= POLLS_BEFORE_END // INJECT_EVERY
    # the end was read from the first answer that said so: not one poll more
    assert up.end_noticed_at_get == up.gets
    r = redis.Redis.from_url(fast.effective_redis_url, decode_responses=True)
    rec = r.hgetall(Keys().job(jid))
    r.close()
    # failures were counted one run at a time and reset by each success
    assert rec["poll_errors"] == "0"
    assert rec.get("poll_faults", "0") == "0"


def _label_swapping_upstream() -> tuple[httpx.MockTransport, dict[str, Any]]:
    """The first interaction answers with another job's label (as after an
    upstream that reused an id); the re-created one answers with the job's own."""
    seen: dict[str, Any] = {"creates": 0, "job": ""}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            seen["creates"] += 1
            seen["job"] = json.loads(request.content)["labels"]["interq_job"]
            return httpx.Response(200, json={"id": f"int_{seen['creates']}", "status": "queued"})
        mine = request.url.path.endswith("/int_2")
        label = seen["job"] if mine else "job_someone_else"
        text = "my answer" if mine else "another tenant's secret"
        return httpx.Response(
            200,
            json={
                "id": request.url.path.rsplit("/", 1)[-1],
                "status": "completed",
                "labels": {"interq_job": label},
                "steps": [{"type": "model_output", "content": [{"type": "text", "text": text}]}],
            },
        )

    return httpx.MockTransport(handler), seen


async def test_answer_with_another_jobs_label_is_never_attached(
    api: httpx.AsyncClient, fast: Settings
) -> None:
    transport, seen = _label_swapping_upstream()
    before = metrics.LABEL_MISMATCHES._value.get()
    async with running_worker(fast, _transport=transport):
        jid = (await api.post("/v1/jobs", json=job_body("mine"))).json()["id"]
        job = (await wait_terminal(api, [jid]))[jid]
        result = (await api.get(f"/v1/jobs/{jid}/result")).json()
    assert job["status"] == "completed"
    assert job["output_text"] == "my answer"
    assert job["interaction_id"] == "int_2"
    assert seen["creates"] == 2
    assert result["id"] == "int_2" and "secret" not in json.dumps(result)
    assert metrics.LABEL_MISMATCHES._value.get() == before + 1


async def test_continued_job_counts_in_flight_until_it_ends(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer
) -> None:
    r = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
    key = Keys().inflight("sim-model")
    async with running_worker(settings):
        body = job_body("weather? [sim duration=0.2 outcome=requires_action]")
        jid = (await api.post("/v1/jobs", json=body)).json()["id"]

        async def paused() -> dict[str, Any] | None:
            job = (await api.get(f"/v1/jobs/{jid}")).json()
            return job if job["status"] == "requires_action" else None

        job = await wait_until(paused, what="requires_action")
        assert r.zscore(key, jid) is None  # a paused job holds no slot
        call = job["pending_calls"][0]
        answer = {"type": "function_result", "call_id": call["id"], "name": call["name"],
                  "result": {"temp_c": 21}}  # fmt: skip
        sim.state.config.duration_s = 600.0  # the follow-up runs until cancelled
        resp = await api.post(f"/v1/jobs/{jid}/continue", json={"input": [answer]})
        assert resp.status_code == 202
        assert r.zscore(key, jid) is not None
        text = (await api.get("/metrics")).text
        assert 'interq_jobs_in_flight{model="sim-model"} 1.0' in text

        def hops() -> int:
            return len(json.loads(r.hget(Keys().job(jid), "interaction_ids") or "[]"))

        await wait_until(lambda: hops() == 2, what="the follow-up created")
        assert r.zscore(key, jid) is not None
        assert (await api.post(f"/v1/jobs/{jid}/cancel")).status_code == 202
        done = (await wait_terminal(api, [jid]))[jid]
    assert done["status"] == "cancelled"
    assert r.zscore(key, jid) is None
    r.close()
