"""Pure functions over Interaction JSON: what interq reads out of a result.

These follow the google-genai SDK: the answer is built from the ``model_output``
steps after the last ``user_input`` step (the SDK's ``output_text``); pending
function calls are ``function_call`` steps with no matching ``function_result``.
"""

from __future__ import annotations

from typing import Any

USAGE_KINDS = {
    "total_input_tokens": "input",
    "total_output_tokens": "output",
    "total_cached_tokens": "cached",
    "total_thought_tokens": "thought",
    "total_tool_use_tokens": "tool_use",
}


def _steps(interaction: dict[str, Any]) -> list[dict[str, Any]]:
    steps = interaction.get("steps")
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []


def trailing_model_outputs(interaction: dict[str, Any]) -> list[dict[str, Any]]:
    steps = _steps(interaction)
    last_input = max((i for i, s in enumerate(steps) if s.get("type") == "user_input"), default=-1)
    return [s for s in steps[last_input + 1 :] if s.get("type") == "model_output"]


def output_text(interaction: dict[str, Any]) -> str | None:
    parts: list[str] = []
    for step in trailing_model_outputs(interaction):
        for c in step.get("content") or []:
            if isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str):
                parts.append(c["text"])
    return "".join(parts) if parts else None


def pending_calls(interaction: dict[str, Any]) -> list[dict[str, Any]]:
    steps = _steps(interaction)
    answered = {s.get("call_id") for s in steps if s.get("type") == "function_result"}
    return [
        {"id": s.get("id"), "name": s.get("name"), "arguments": s.get("arguments")}
        for s in steps
        if s.get("type") == "function_call" and s.get("id") not in answered
    ]


def errors(interaction: dict[str, Any]) -> dict[str, Any] | None:
    """The upstream's own account of a failure: ``errors[]`` and any
    ``model_output.error`` status."""
    found: list[dict[str, Any]] = []
    for e in interaction.get("errors") or []:
        if isinstance(e, dict):
            found.append({"code": str(e.get("code", "")), "message": str(e.get("message", ""))})
    for step in trailing_model_outputs(interaction):
        err = step.get("error")
        if isinstance(err, dict):
            found.append({"code": str(err.get("code", "")), "message": str(err.get("message", ""))})
    if not found:
        return None
    return {"code": "upstream_failed", "message": found[0]["message"], "upstream": found}


def token_counts(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    for field, kind in USAGE_KINDS.items():
        v = usage.get(field)
        if isinstance(v, int) and v > 0:
            out[kind] = v
    return out
