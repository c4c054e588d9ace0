"""Live output in a job's event stream: a watcher of a running job gets its
partial text (``output``, then ``delta`` events) before the job completes,
relayed from the simulator's own stream of the interaction; a dropped
upstream stream is resumed without losing or repeating text; with no
watcher no upstream stream is opened.

The API runs under uvicorn (the events router's lifespan holds the relays),
a worker in this event loop, the simulator on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from api import create_app
from jobs.dev.procs import free_port
from jobs.settings import Settings
from jobs.upstream import stream
from tests.helpers import AppServer, SimServer, job_body, running_worker, wait_terminal


@pytest.fixture()
async def served(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    server = AppServer(create_app(settings), free_port(), lifespan="on")
    server.start()
    try:
        async with (
            running_worker(settings),
            httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        ):
            yield client
    finally:
        server.stop()


async def _watch(client: httpx.AsyncClient, job_id: str) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    async with aconnect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        async for sse in source.aiter_sse():
            if sse.event and sse.data:
                seen.append((sse.event, json.loads(sse.data)))
    return seen


def _streams(sim: SimServer) -> list[dict[str, Any]]:
    return [e for e in sim.state.requests if e["op"] == "stream"]


async def _run(
    client: httpx.AsyncClient, text: str
) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    jid = (await client.post("/v1/jobs", json=job_body(text))).json()["id"]
    seen = await _watch(client, jid)
    job = (await wait_terminal(client, [jid]))[jid]
    return seen, job


def _text_before_the_end(seen: list[tuple[str, Any]]) -> str:
    end = next(
        i for i, (kind, d) in enumerate(seen) if kind == "status" and d["status"] == "completed"
    )
    text = ""
    for kind, data in seen[:end]:
        if kind == "output":
            text = data["text"]
        elif kind == "delta" and data["type"] == "text":
            text += data["text"]
    return text


async def test_a_watcher_sees_partial_text_before_the_job_completes(
    served: httpx.AsyncClient, sim: SimServer
) -> None:
    seen, job = await _run(served, "a long essay please [sim duration=2]")
    assert job["status"] == "completed"
    kinds = [k for k, _ in seen]
    assert "delta" in kinds and kinds.index("delta") < len(kinds) - 1
    assert _text_before_the_end(seen) == job["output_text"]  # all of it, before the end
    assert len(_streams(sim)) == 1


async def test_a_dropped_upstream_stream_is_resumed_without_losing_or_repeating_text(
    served: httpx.AsyncClient, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "RECONNECT_S", (0.0,))
    sim.state.update_config({"stream_drop_after": 3})
    seen, job = await _run(served, "a long essay please [sim duration=2]")
    assert job["status"] == "completed"
    assert _text_before_the_end(seen) == job["output_text"]
    resumed = _streams(sim)
    assert len(resumed) > 1


async def test_no_watcher_no_upstream_stream(served: httpx.AsyncClient, sim: SimServer) -> None:
    jid = (await served.post("/v1/jobs", json=job_body("quiet [sim duration=0.2]"))).json()["id"]
    job = (await wait_terminal(served, [jid]))[jid]
    assert job["status"] == "completed" and _streams(sim) == []
