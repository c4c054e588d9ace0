"""interq's answer reading agrees with the google-genai SDK on the SDK's own cases.

The step shapes come from the SDK's test module itself
(``google/genai/tests/interactions/test_integration.py``,
``test_output_text_across_steps``): its parametrize list is read at import, so a
new SDK case is checked here without copying it. Each shape goes through the
SDK's ``Interaction`` model and ``_add_output_properties_if_interaction`` and
through ``jobs.upstream.answers``; the answers must be equal.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.genai._gaos import google_genai as sdk_genai
from google.genai._gaos.types.interactions.interaction import Interaction
from google.genai.tests.interactions import test_integration as sdk_cases

from jobs.upstream import answers


def _sdk_params() -> list[Any]:
    marks = sdk_cases.test_output_text_across_steps.pytestmark
    (mark,) = [m for m in marks if m.name == "parametrize"]
    assert mark.args[0] == "steps,expected"
    return list(mark.args[1])


SDK_PARAMS = _sdk_params()

# Extra shapes from the reference (interactions-api.md section 8) and the edges
# of the SDK's walk: no text, a trailing image, a tool call ending the turn.
EXTRA: dict[str, list[dict[str, Any]]] = {
    "empty": [],
    "only_tool_call": [{"type": "function_call", "id": "c", "name": "f", "arguments": {}}],
    "text_then_image": [
        {
            "type": "model_output",
            "content": [
                {"type": "text", "text": "A"},
                {"type": "text", "text": "B"},
                {"type": "image", "data": "aW1hZ2U=", "mime_type": "image/png"},
            ],
        }
    ],
    "code_execution_boundary": [
        {"type": "model_output", "content": [{"type": "text", "text": "plan "}]},
        {"type": "code_execution_call", "id": "x", "arguments": {"code": "1"}},
        {"type": "code_execution_result", "call_id": "x", "result": "1"},
        {"type": "model_output", "content": [{"type": "text", "text": "done"}]},
    ],
    "user_input_last": [
        {"type": "model_output", "content": [{"type": "text", "text": "old"}]},
        {"type": "user_input", "content": [{"type": "text", "text": "new"}]},
    ],
}


def _payload(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "v1_123", "status": "completed", "steps": steps}


def _sdk_text(payload: dict[str, Any]) -> str | None:
    model = Interaction.model_validate(payload)
    wrapped = sdk_genai._add_output_properties_if_interaction(payload)
    assert (model.output_text or None) == wrapped.get("output_text")
    return model.output_text or None


def test_sdk_cases_are_loaded() -> None:
    ids = {p.id for p in SDK_PARAMS}
    assert {"tool_boundary", "non_text_barrier", "user_input_boundary"} <= ids


@pytest.mark.parametrize("steps,expected", SDK_PARAMS)
def test_output_text_matches_sdk_case(steps: list[dict[str, Any]], expected: str) -> None:
    payload = _payload(steps)
    assert answers.output_text(payload) == expected == _sdk_text(payload)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_output_text_matches_sdk_extra(name: str) -> None:
    payload = _payload(EXTRA[name])
    assert answers.output_text(payload) == _sdk_text(payload)


def test_named_issue_cases() -> None:
    by_id = {p.id: p.values for p in SDK_PARAMS}
    tool_steps, _ = by_id["tool_boundary"]
    barrier_steps, _ = by_id["non_text_barrier"]
    assert answers.output_text(_payload(tool_steps)) == "Final part 1. Final part 2."
    assert answers.output_text(_payload(barrier_steps)) == "Y"


def test_pending_calls_match_steps_on_tool_boundary() -> None:
    tool_steps, _ = {p.id: p.values for p in SDK_PARAMS}["tool_boundary"]
    payload = _payload(tool_steps)
    model = Interaction.model_validate(payload)
    answered = {s.call_id for s in model.steps or [] if s.type == "function_result"}
    sdk_pending = [s.id for s in model.steps or [] if s.type == "function_call"]
    sdk_pending = [i for i in sdk_pending if i not in answered]
    assert [c["id"] for c in answers.pending_calls(payload)] == sdk_pending == ["call_trailing"]


def test_legacy_lyria_outputs_read_as_a_step() -> None:
    payload = {
        "id": "y",
        "status": "completed",
        "model": "lyria-3-pro-preview",
        "outputs": [{"type": "text", "text": "lyrics"}, {"type": "audio", "data": "abc"}],
    }
    assert answers.output_text(payload) == _sdk_text(payload)
    assert _sdk_text(payload) == "lyrics"  # a non-text part before the run is skipped
