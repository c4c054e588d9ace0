"""interq and the google-genai SDK read every shape the simulator makes alike.

The cases are enumerated from the simulator's own lists (``wire.OUTCOMES`` x
``wire.OUTPUTS`` and ``wire.SHAPES``), so a new outcome or shape is covered
without touching this file. Each case is run on a bare :class:`Simulator` (no
HTTP, no clock: synchronous creates finish at once), pauses are answered
(every pending call, or a text reply to a question) and continuations
followed, and every interaction body met on the way is read twice: by the
SDK's own ``Interaction`` model (``output_text``, its typed steps, ``usage``,
``errors``) and by ``jobs.upstream.answers``. They must agree on the output
text, the pending function calls, the token counts and the errors.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from google.genai._gaos.types.interactions.interaction import Interaction

from jobs.dev.simulator.app import create_app, parse_directive
from jobs.dev.simulator.config import SimConfig
from jobs.dev.simulator.lifecycle import Simulator
from jobs.dev.simulator.wire import MULTI_ROUNDS, OUTCOMES, OUTPUTS, SHAPES, SLOW_CANCEL_POLLS
from jobs.upstream import answers
from tests.helpers import job_body, wait_terminal
from tests.test_simulator import client_for, conform, create, poll

TOOLS = [{"type": "function", "name": "get_weather"}, {"type": "function", "name": "get_time"}]
SDK_USAGE = {  # the SDK's Usage fields and interq's names for them
    "total_input_tokens": "input",
    "total_output_tokens": "output",
    "total_cached_tokens": "cached",
    "total_thought_tokens": "thought",
    "total_tool_use_tokens": "tool_use",
}
CASES = [f"outcome={o} output={out}" for o in OUTCOMES for out in OUTPUTS]
CASES += [f"shape={s}" for s in SHAPES]


# --------------------------------------------------------------- the readers


def sdk_view(body: dict[str, Any]) -> dict[str, Any]:
    """What the SDK reads: ``output_text`` ("" as None), the ``function_call``
    steps no ``function_result`` answers, the usage counts it has, and its
    ``errors`` then the ``model_output.error`` of the steps after the last
    ``user_input``."""
    sdk = conform(body)
    steps = sdk.steps or []
    answered = {s.call_id for s in steps if s.type == "function_result"}
    pending = [
        {"id": s.id, "name": s.name, "arguments": s.arguments}
        for s in steps
        if s.type == "function_call" and s.id not in answered
    ]
    usage = {}
    for field, kind in SDK_USAGE.items():
        value = getattr(sdk.usage, field, None) if sdk.usage is not None else None
        if value:
            usage[kind] = value
    errs = [(e.code or "", e.message or "") for e in sdk.errors or []]
    last_input = max((i for i, s in enumerate(steps) if s.type == "user_input"), default=-1)
    for step in steps[last_input + 1 :]:
        err = getattr(step, "error", None) if step.type == "model_output" else None
        if err is not None:
            errs.append(("" if err.code is None else str(err.code), err.message or ""))
    return {"text": sdk.output_text or None, "pending": pending, "usage": usage, "errors": errs}


def interq_view(body: dict[str, Any]) -> dict[str, Any]:
    err = answers.errors(body)
    found = [(e["code"], e["message"]) for e in err["upstream"]] if err else []
    if err:
        assert err["message"] == found[0][1]
    return {
        "text": answers.output_text(body),
        "pending": answers.pending_calls(body),
        "usage": answers.token_counts(body.get("usage")),
        "errors": found,
    }


def check(body: dict[str, Any]) -> dict[str, Any]:
    view = sdk_view(body)
    assert interq_view(body) == view, body
    return view


# ---------------------------------------------------------------- the runs


def new_sim() -> Simulator:
    return Simulator(SimConfig(duration_s=0.0, seed=1))


def start(sim: Simulator, text: str, **extra: Any) -> str:
    _, iid = sim.create({"model": "m", "input": text, "tools": TOOLS, **extra})
    return iid


def follow(body: dict[str, Any]) -> dict[str, Any] | None:
    """The create that carries a stopped interaction on, or None at the end."""
    base = {"model": "m", "tools": TOOLS, "previous_interaction_id": body["id"]}
    if body["status"] == "requires_continuation":
        return base | {"continuation_token": body["continuation_token"]}
    if body["status"] != "requires_action":
        return None
    calls = answers.pending_calls(body)
    if not calls:  # a question: answer it in words
        return base | {"input": "Paris, France."}
    results = [
        {"type": "function_result", "call_id": c["id"], "name": c["name"], "result": "sunny"}
        for c in calls
    ]
    return base | {"input": results}


def run_case(case: str) -> list[dict[str, Any]]:
    """Every interaction body of a case, from the first to the end of its chain."""
    sim = new_sim()
    if case == "shape=slow_cancel":
        return run_slow_cancel(sim)
    rec = sim.interactions[start(sim, f"what is the weather? [sim {case}]")]
    bodies = [sim.render(rec)]
    while (nxt := follow(bodies[-1])) is not None:
        _, iid = sim.create(nxt)
        bodies.append(sim.render(sim.interactions[iid]))
        assert len(bodies) <= MULTI_ROUNDS + 2, "a chain that does not end"
    return bodies


def run_slow_cancel(sim: Simulator) -> list[dict[str, Any]]:
    iid = start(sim, "long [sim shape=slow_cancel duration=600]", background=True)
    bodies = [sim.get(iid), sim.cancel(iid)]
    bodies += [sim.get(iid) for _ in range(SLOW_CANCEL_POLLS + 1)]
    return bodies


@pytest.mark.parametrize("case", CASES)
def test_sdk_and_interq_agree(case: str) -> None:
    for body in run_case(case):
        check(body)


def test_every_shape_is_a_case() -> None:
    assert {f"shape={s}" for s in SHAPES} <= set(CASES)
    assert len(CASES) == len(OUTCOMES) * len(OUTPUTS) + len(SHAPES)


# Edges of the readers the simulator does not make, each once a difference
# fixed in jobs/upstream/answers.py: null error fields, counts as strings.
EDGES: dict[str, dict[str, Any]] = {
    "null_error_fields": {"errors": [{"code": None, "message": None}]},
    "step_error_without_code": {
        "steps": [{"type": "model_output", "error": {"message": "m", "details": []}}]
    },
    "step_error_code_as_string": {
        "steps": [{"type": "model_output", "error": {"code": "8", "message": "m"}}]
    },
    "usage_as_strings": {"usage": {"total_input_tokens": "12", "total_output_tokens": 3.0}},
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_edges_agree(name: str) -> None:
    check({"id": "v1_edge", "status": "failed"} | EDGES[name])


# ------------------------------------------- each shape is the hard one it names


def views(case: str) -> list[dict[str, Any]]:
    return [check(b) | {"status": b["status"]} for b in run_case(case)]


def test_tool_boundary_keeps_only_the_text_after_the_tool() -> None:
    [v] = views("shape=tool_boundary")
    assert v["text"].startswith("Final part 1. Simulated answer")
    assert "Before tool call." not in v["text"] and v["usage"]["tool_use"] > 0


def test_tool_then_call_pauses_on_the_text_before_the_call() -> None:
    first, last = views("shape=tool_then_call")
    assert (first["status"], first["text"]) == ("requires_action", "Now a function. ")
    assert [c["arguments"] for c in first["pending"]] == [{"city": "Paris"}]
    assert last["status"] == "completed" and last["pending"] == []


def test_image_barrier_keeps_the_text_after_the_last_image() -> None:
    [v] = views("shape=image_barrier")
    assert v["text"].startswith("Simulated answer") and "Caption" not in v["text"]


def test_multi_round_pauses_once_a_round_then_answers() -> None:
    vs = views("shape=multi_round")
    assert [v["status"] for v in vs] == ["requires_action"] * MULTI_ROUNDS + ["completed"]
    ids = [c["id"] for v in vs[:-1] for c in v["pending"]]
    assert len(set(ids)) == MULTI_ROUNDS and vs[-1]["text"].startswith("Simulated answer")


def test_parallel_calls_pause_with_several_calls() -> None:
    first, last = views("shape=parallel_calls")
    assert [c["name"] for c in first["pending"]] == ["get_weather", "get_time", "get_weather"]
    assert last["text"] == "Simulated answer using 3 results: get_weather, get_time, get_weather"


def test_question_pauses_without_a_call() -> None:
    first, last = views("shape=question")
    assert first == first | {"status": "requires_action", "pending": []}
    assert first["text"] == "Which city do you mean?" and last["status"] == "completed"


def test_error_shapes() -> None:
    [listed] = views("shape=error_list")
    assert listed["status"] == "failed" and len(listed["errors"]) == 2 and listed["text"]
    [status] = views("shape=error_status")
    assert status["errors"] == [
        ("RESOURCE_EXHAUSTED", "Simulated rate limit"),
        ("", "Simulated error without a code"),
        ("8", "Simulated rate limit"),
    ]


def test_slow_cancel_stays_in_progress_for_some_polls_after_the_cancel() -> None:
    statuses = [v["status"] for v in views("shape=slow_cancel")]
    assert statuses == ["in_progress"] * (SLOW_CANCEL_POLLS + 2) + ["cancelled"]


def test_a_shape_fixes_its_outcome() -> None:
    sim = new_sim()
    with pytest.raises(Exception, match="shape=question is outcome=requires_action"):
        start(sim, "x [sim shape=question outcome=completed]")


# ------------------------------------------------------------- over HTTP


def test_shape_is_a_directive_key() -> None:
    assert parse_directive("x [sim shape=question duration=1]") == {
        "shape": "question",
        "duration": 1.0,
    }
    with pytest.raises(ValueError):
        parse_directive("[sim shape=nope]")


async def test_shapes_over_http() -> None:
    """The app's routes serve the shapes: a slow cancel polled to its end, and
    the rounds of ``multi_round`` answered as interq answers them."""
    async with client_for(create_app(SimConfig(duration_s=0.05))) as client:
        r = await create(client, "long [sim shape=slow_cancel duration=60]")
        iid = r.json()["id"]
        cancel = await client.post(f"/v1/interactions/{iid}/cancel")
        assert cancel.status_code == 200 and cancel.json()["status"] == "in_progress"
        seen: list[str] = []
        check(await poll(client, iid, {"cancelled"}, seen))
        assert seen == ["in_progress", "cancelled"]

        r = await create(client, "w [sim shape=multi_round]", tools=TOOLS)
        body = await poll(client, r.json()["id"], {"requires_action"})
        for _ in range(MULTI_ROUNDS):
            check(body)
            nxt = follow(body)
            assert nxt is not None
            r = await client.post("/v1/interactions", json=nxt | {"background": True})
            assert r.status_code == 200, r.text
            body = await poll(client, r.json()["id"], {"requires_action", "completed"})
        assert check(body)["text"] == 'Simulated answer using get_weather result: "sunny"'


# ------------------------------------------------------------- end to end


async def test_job_output_text_is_the_sdks_on_tool_boundary(
    api: httpx.AsyncClient, worker: None
) -> None:
    r = await api.post("/v1/jobs", json=job_body("hard [sim shape=tool_boundary duration=0.2]"))
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    job = (await wait_terminal(api, [jid], timeout=60))[jid]
    assert job["status"] == "completed", job
    stored = (await api.get(job["result_url"])).json()
    sdk_text = Interaction.model_validate(stored).output_text
    assert job["output_text"] == sdk_text and sdk_text.startswith("Final part 1. ")
