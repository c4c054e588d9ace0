"""A turn answered in several interactions (``requires_continuation`` hops) has
the text the SDK gives for it: ``merge_unary_hops`` (the hops' steps joined,
later hops' leading ``user_input`` steps dropped) and then ``output_text``.

interq keeps no earlier hop's steps, only what ``answers.turn_text`` returns
for them, so every sequence of two and three hops built from the fragments
below (text, thought, tool steps, images, a user_input in the middle, a later
hop that repeats the input) is checked against the SDK's own merge. The last
test runs a two-hop job through the worker and the simulator's
continuation and compares the job's ``output_text`` with the SDK's merge of
the interactions the simulator holds.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from google.genai import _interactions_continuation as sdk_continuation
from google.genai._gaos.types.interactions.interaction import Interaction

from jobs.upstream import answers
from tests.helpers import SimServer, job_body, wait_terminal


def _text(t: str) -> dict[str, Any]:
    return {"type": "model_output", "content": [{"type": "text", "text": t}]}


IMAGE = {"type": "image", "data": "aW1hZ2U=", "mime_type": "image/png"}
INPUT = {"type": "user_input", "content": [{"type": "text", "text": "question"}]}

FRAGMENTS: dict[str, list[dict[str, Any]]] = {
    "nothing": [],
    "text": [_text("A. ")],
    "two_texts": [_text("B1. "), _text("B2. ")],
    "thought_then_text": [{"type": "thought", "signature": "s"}, _text("C. ")],
    "text_then_tool": [
        _text("D. "),
        {"type": "google_search_call", "id": "g", "arguments": {"queries": ["q"]}},
        {"type": "google_search_result", "call_id": "g", "result": []},
    ],
    "tool_then_text": [
        {"type": "code_execution_call", "id": "x", "arguments": {"code": "1"}},
        {"type": "code_execution_result", "call_id": "x", "result": "1"},
        _text("E. "),
    ],
    "text_then_image": [
        {"type": "model_output", "content": [{"type": "text", "text": "F. "}, IMAGE]}
    ],
    "image_only": [{"type": "model_output", "content": [IMAGE]}],
    "input_again_then_text": [INPUT, _text("G. ")],
    "input_in_the_middle": [_text("H. "), INPUT, _text("I. ")],
}


def _hop(i: int, steps: list[dict[str, Any]], last: bool) -> dict[str, Any]:
    status = "completed" if last else "requires_continuation"
    return {"id": f"v1_hop{i}", "status": status, "continuation_token": "tok", "steps": steps}


def _sdk_text(hops: list[dict[str, Any]]) -> str | None:
    merged = sdk_continuation.merge_unary_hops(hops)
    return Interaction.model_validate(merged).output_text or None


def _interq_text(hops: list[dict[str, Any]]) -> str | None:
    earlier: tuple[str, str] | None = None
    text: str | None = None
    for hop in hops:
        text, run = answers.turn_text(hop, earlier)
        earlier = (text or "", run)
    return text


def _hops(names: tuple[str, ...]) -> list[dict[str, Any]]:
    steps = [[INPUT, *FRAGMENTS[names[0]]]] + [list(FRAGMENTS[n]) for n in names[1:]]
    return [_hop(i, s, i == len(steps) - 1) for i, s in enumerate(steps)]


@pytest.mark.parametrize("names", list(itertools.product(FRAGMENTS, repeat=2)), ids="+".join)
def test_two_hops_have_the_sdks_merged_output_text(names: tuple[str, ...]) -> None:
    hops = _hops(names)
    assert _interq_text(hops) == _sdk_text(hops)


def test_three_hops_have_the_sdks_merged_output_text() -> None:
    sequences = list(itertools.product(FRAGMENTS, repeat=3))
    differ = [n for n in sequences if _interq_text(_hops(n)) != _sdk_text(_hops(n))]
    assert len(sequences) == 1000 and differ == []


def test_a_tool_step_in_a_later_hop_drops_the_earlier_text() -> None:
    """The case a plain join of the hops' texts got wrong."""
    hops = [_hop(0, [INPUT, _text("A. ")], False), _hop(1, FRAGMENTS["tool_then_text"], True)]
    assert _interq_text(hops) == "E. " == _sdk_text(hops)


def test_a_later_hop_with_no_text_keeps_the_earlier_answer() -> None:
    hops = [_hop(0, [INPUT, _text("A. ")], False), _hop(1, FRAGMENTS["image_only"], True)]
    assert _interq_text(hops) == "A. " == _sdk_text(hops)


async def test_a_continued_job_has_the_sdks_merged_text(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    body = job_body("long essay [sim duration=0.1 outcome=requires_continuation]")
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]
    job = (await wait_terminal(api, [jid]))[jid]
    assert job["status"] == "completed", job
    hops = [sim.state.render(sim.state.interactions[i]) for i in job["interaction_ids"]]
    assert len(hops) == 2 and hops[0]["status"] == "requires_continuation"
    assert job["output_text"] == _sdk_text(hops) == "Simulated answer to: long essay"
