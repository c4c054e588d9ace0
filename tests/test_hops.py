"""A job of several interactions upstream (continued after ``requires_action``
with any answer the API takes, or after ``requires_continuation``): its usage
is the sum of its hops, each hop kept, and its batch and webhook carry the
sum; the usage arithmetic itself."""

from __future__ import annotations

from typing import Any

import httpx

from jobs.domain import usage
from tests.helpers import SimServer, job_body, wait_terminal, wait_until


async def paused(api: httpx.AsyncClient, jid: str) -> dict[str, Any] | None:
    job = (await api.get(f"/v1/jobs/{jid}")).json()
    return job if job["status"] == "requires_action" else None


async def test_usage_of_a_three_hop_job_is_the_sum_of_its_hops(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    body = job_body("weather? [sim duration=0.1 outcome=requires_action]")
    body["interaction"]["tools"] = [{"type": "function", "name": "get_weather"}]
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]
    job = await wait_until(lambda: paused(api, jid), what="requires_action")
    [call] = job["pending_calls"]
    answer = [
        {"type": "function_result", "call_id": call["id"], "name": "get_weather", "result": "21C"},
        {"type": "text", "text": "and tomorrow? [sim outcome=requires_continuation]"},
    ]
    r = await api.post(f"/v1/jobs/{jid}/continue", json={"input": answer})
    assert r.status_code == 202, r.text

    done = (await wait_terminal(api, [jid]))[jid]
    assert done["status"] == "completed"
    ids = done["interaction_ids"]
    assert len(ids) == 3  # paused, then stopped for a continuation, then completed
    hops = [sim.state.interactions[i]["usage"] for i in ids]
    assert done["usage_by_interaction"] == hops
    for field in ("total_input_tokens", "total_output_tokens", "total_tokens"):
        assert done["usage"][field] == sum(h[field] for h in hops), field
    assert done["usage"]["total_tokens"] > hops[-1]["total_tokens"]  # not the last hop's


async def test_an_agent_question_without_a_function_call_is_answered_with_text(
    api: httpx.AsyncClient, worker: None, sim: SimServer
) -> None:
    jid = (await api.post("/v1/jobs", json=job_body("plan [sim shape=question]"))).json()["id"]
    job = await wait_until(lambda: paused(api, jid), what="requires_action")
    assert not job["pending_calls"] and job["output_text"]  # the question, as text

    r = await api.post(f"/v1/jobs/{jid}/continue", json={"input": "yes, go ahead"})
    assert r.status_code == 202, r.text
    done = (await wait_terminal(api, [jid]))[jid]
    assert done["status"] == "completed" and len(done["interaction_ids"]) == 2
    sent = sim.state.interactions[done["interaction_ids"][1]]
    assert sent["echo"]["previous_interaction_id"] == done["interaction_ids"][0]
    assert sent["input_steps"][0]["content"] == [{"type": "text", "text": "yes, go ahead"}]


async def test_continue_refuses_empty_input_and_results_for_unknown_calls(
    api: httpx.AsyncClient, worker: None
) -> None:
    body = job_body("weather? [sim duration=0.1 outcome=requires_action]")
    body["interaction"]["tools"] = [{"type": "function", "name": "get_weather"}]
    jid = (await api.post("/v1/jobs", json=body)).json()["id"]
    await wait_until(lambda: paused(api, jid), what="requires_action")
    for bad in ("  ", [], [{"text": "no type"}], [{"type": "function_result", "call_id": "x"}]):
        r = await api.post(f"/v1/jobs/{jid}/continue", json={"input": bad})
        assert r.status_code == 422, (bad, r.text)
    unknown = [{"type": "function_result", "call_id": "nope", "result": 1}]
    r = await api.post(f"/v1/jobs/{jid}/continue", json={"input": unknown})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_call_id"
    assert (await api.get(f"/v1/jobs/{jid}")).json()["status"] == "requires_action"


def test_usage_total_adds_counts_and_lists_by_their_key() -> None:
    a = {
        "total_tokens": 10,
        "total_input_tokens": 4,
        "input_tokens_by_modality": [{"modality": "text", "tokens": 4}],
        "grounding_tool_count": [{"type": "google_search", "count": 1}],
    }
    b = {
        "total_tokens": 5,
        "total_output_tokens": 5,
        "input_tokens_by_modality": [
            {"modality": "text", "tokens": 2},
            {"modality": "image", "tokens": 7},
        ],
        "grounding_tool_count": [{"type": "google_search", "count": 2}],
    }
    assert usage.total([a, None, b]) == {
        "total_tokens": 15,
        "total_input_tokens": 4,
        "total_output_tokens": 5,
        "input_tokens_by_modality": [
            {"modality": "text", "tokens": 6},
            {"modality": "image", "tokens": 7},
        ],
        "grounding_tool_count": [{"type": "google_search", "count": 3}],
        "initial_input_tokens": 4,  # the first hop's input, not a sum
    }
    assert usage.total([a]) == a and usage.total([None, None]) is None


def test_usage_total_agrees_with_the_sdks_merge_of_hops() -> None:
    from google.genai._interactions_continuation import _merge_usages

    hops: list[dict[str, Any]] = [
        {"total_tokens": 30, "total_input_tokens": 20, "total_output_tokens": 10},
        {
            "total_tokens": 50,
            "total_input_tokens": 35,
            "total_output_tokens": 15,
            "initial_input_tokens": 35,
            "output_tokens_by_modality": [{"modality": "text", "tokens": 15}],
        },
        {
            "total_tokens": 12,
            "total_input_tokens": 8,
            "total_output_tokens": 4,
            "total_thought_tokens": 3,
            "output_tokens_by_modality": [
                {"modality": "text", "tokens": 2},
                {"modality": "image", "tokens": 2},
            ],
        },
    ]
    for n in range(2, len(hops) + 1):  # one interaction: its own usage, nothing merged
        assert usage.total(hops[:n]) == _merge_usages(hops[:n]), n
    assert usage.total(hops[:1]) == hops[0]
    with_initial = [{**hops[0], "initial_input_tokens": 5}, hops[1]]
    assert usage.total(with_initial) == _merge_usages(with_initial)
