"""Live output from the upstream's stream (``jobs/upstream/stream.py``) against
the simulator's ``?stream=true``: the pieces join to the interaction's answer,
a dropped stream (after a few events, or cut by time as the API cuts at 600 s)
is resumed with ``last_event_id`` without losing or repeating text, watchers of
one interaction share one upstream stream, and a stream that never gets
anywhere ends (polling carries on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jobs.settings import Settings
from jobs.upstream import answers, stream
from jobs.upstream.stream import LiveStream, Relays
from tests.helpers import SimServer


@pytest.fixture()
async def live(settings: Settings) -> AsyncIterator[LiveStream]:
    s = LiveStream(settings)
    yield s
    await s.aclose()


async def _create(sim: SimServer, text: str) -> str:
    body = {"model": "sim-model", "input": text, "background": True}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{sim.url}/v1beta/interactions", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _answer(sim: SimServer, iid: str) -> str | None:
    return answers.output_text(sim.state.render(sim.state.interactions[iid]))


def _streams(sim: SimServer) -> list[dict[str, Any]]:
    return [e for e in sim.state.requests if e["op"] == "stream"]


async def test_the_pieces_join_to_the_answer(live: LiveStream, sim: SimServer) -> None:
    iid = await _create(sim, "tell me a long story [sim duration=0.3]")
    got = [d async for d in live.deltas(iid)]
    text = "".join(d.text for d in got if d.kind == "text")
    assert text and text == _answer(sim, iid)
    assert len(got) > 1 and len(_streams(sim)) == 1


@pytest.mark.parametrize("fault", [{"stream_drop_after": 3}, {"stream_cut_s": 0.1}])
async def test_a_dropped_stream_resumes_without_losing_or_repeating_text(
    live: LiveStream, sim: SimServer, fault: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "RECONNECT_S", (0.0,))
    sim.state.update_config(fault)
    iid = await _create(sim, "tell me a long story [sim duration=0.6]")
    got = [d async for d in live.deltas(iid)]
    assert "".join(d.text for d in got if d.kind == "text") == _answer(sim, iid)
    assert len({d.event_id for d in got}) == len(got)  # no event twice
    assert len(_streams(sim)) > 1  # it did drop and resume


async def test_a_stream_that_never_gets_anywhere_ends(
    live: LiveStream, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "RECONNECT_S", (0.0,))
    sim.state.update_config({"stream_cut_s": 0.0})
    iid = await _create(sim, "x [sim duration=5]")
    assert [d async for d in live.deltas(iid)] == []
    # the first connection gets the events due at once, then MAX_DROPS get nothing
    assert len(_streams(sim)) == 1 + stream.MAX_DROPS


async def test_watchers_of_one_interaction_share_one_upstream_stream(
    live: LiveStream, sim: SimServer
) -> None:
    iid = await _create(sim, "tell me a long story [sim duration=0.4]")
    relays = Relays(live)
    async with relays.watch(iid) as (before_a, qa):
        first = await qa.get()
        assert first is not None
        async with relays.watch(iid) as (before_b, qb):
            assert first in before_b  # a late watcher gets the text so far
            rest_a, rest_b = [], []
            while (d := await qa.get()) is not None:
                rest_a.append(d)
            while (d := await qb.get()) is not None:
                rest_b.append(d)
    text_a = "".join(d.text for d in [*before_a, first, *rest_a] if d.kind == "text")
    text_b = "".join(d.text for d in [*before_b, *rest_b] if d.kind == "text")
    assert text_a == text_b == _answer(sim, iid)
    assert len(_streams(sim)) == 1 and relays.active == {}  # the last watcher stopped it
