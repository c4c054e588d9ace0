"""Pure functions over Interaction JSON: what interq reads out of a result.

These follow the google-genai SDK (3.6.1). ``output_text`` is a port of
``_output_properties_from_steps`` in ``google/genai/_gaos/google_genai.py``
(the same walk as ``Interaction._populate_output_helpers``): the last unbroken
run of text parts in the trailing ``model_output`` steps after the last
``user_input``. Pending function calls are ``function_call`` steps with no
matching ``function_result`` (the reference, section 4; the SDK has no helper).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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


# The legacy Lyria models answer with ``outputs`` instead of ``steps``; the SDK
# reads them as one model_output step (``_normalize_interaction_shape``).
LEGACY_LYRIA_MODELS = frozenset({"lyria-3-pro-preview", "lyria-3-clip-preview"})


def _answer_steps(interaction: dict[str, Any]) -> list[Any]:
    steps = interaction.get("steps")
    if isinstance(steps, list):
        return steps
    outputs = interaction.get("outputs")
    if interaction.get("model") in LEGACY_LYRIA_MODELS and isinstance(outputs, list) and outputs:
        return [{"type": "model_output", "content": outputs}]
    return []


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def output_text(interaction: dict[str, Any]) -> str | None:
    """The SDK's ``output_text``, or None where the SDK has "" (no text).

    Port of ``_output_properties_from_steps`` (google/genai/_gaos/google_genai.py):
    walk back from the end, stop at ``user_input``, skip ``thought`` steps; once
    a text part is collected, any other step (a tool call) or any non-text part
    (an image) ends the run. So "Before tool call. " then a function call, then
    "Final." gives "Final.", and [text X, image] then "Y" gives "Y".
    """
    text, _ = turn_text(interaction)
    return text


def turn_text(
    interaction: dict[str, Any], earlier: tuple[str, str] | None = None
) -> tuple[str | None, str]:
    """``output_text`` of a turn whose answer came in several interactions
    (``requires_continuation`` hops), as the SDK gives it for the merged
    interaction (``merge_unary_hops`` in ``_interactions_continuation.py``: the
    hops' steps concatenated, each later hop's leading ``user_input`` steps
    dropped), without keeping the earlier hops' steps.

    ``earlier`` is what the earlier hops left, as this function returned it for
    the last of them: ``(their output_text or "", their open run)``, the open
    run being the text at the very end with no other step or part after it
    (what a walk that is already collecting reaches). None for a turn's first
    interaction. Returns ``(output_text, open run)`` after this interaction.
    """
    steps = _answer_steps(interaction)
    if earlier is not None:  # a later hop: its leading user_input steps go
        start = 0
        while start < len(steps) and _get(steps[start], "type") == "user_input":
            start += 1
        steps = steps[start:]
    carry, run = earlier or ("", "")
    tokens = list(_parts_backwards(steps))
    parts: list[str] = []
    reaches_back = True  # the run goes on into the earlier hops
    for token in tokens:
        if isinstance(token, str):
            parts.append(token)
        elif token is _STOP or parts:
            reaches_back = False
            break  # a user_input, or a tool step or non-text part after text
    if parts:
        text = "".join(reversed(parts))
        out = run + text if reaches_back else text
    else:  # nothing here: the walk goes on into the earlier hops, still looking
        out = "" if _STOP in tokens else carry
    return out or None, _open_run(tokens, run)


def _open_run(tokens: list[str | object | None], run: str) -> str:
    """The text at the very end of the merged hops: this hop's trailing text
    parts, and the earlier hops' open run when nothing else is in this hop."""
    parts: list[str] = []
    for token in tokens:
        if not isinstance(token, str):
            return "".join(reversed(parts))
        parts.append(token)
    return run + "".join(reversed(parts))


_STOP = object()  # a user_input step: the turn starts there


def _parts_backwards(steps: list[Any]) -> Iterator[str | object | None]:
    """From the end back to the last ``user_input`` (which yields ``_STOP``):
    each text part's text, or None for a non-text part or a step that is not
    model output (``thought`` steps skipped; a ``model_output`` whose content
    is not a list is skipped too, as the SDK does)."""
    for step in reversed(steps):
        kind = _get(step, "type")
        if kind == "user_input":
            yield _STOP
            return
        if kind == "thought":
            continue
        if kind != "model_output":
            yield None
            continue
        content = _get(step, "content")
        for item in reversed(content if isinstance(content, list) else []):
            text = _get(item, "text")
            is_text = _get(item, "type") == "text"
            yield (text if isinstance(text, str) else "") if is_text else None


def pending_calls(interaction: dict[str, Any]) -> list[dict[str, Any]]:
    steps = _steps(interaction)
    answered = {s.get("call_id") for s in steps if s.get("type") == "function_result"}
    return [
        {"id": s.get("id"), "name": s.get("name"), "arguments": s.get("arguments")}
        for s in steps
        if s.get("type") == "function_call" and s.get("id") not in answered
    ]


def _error_entry(err: dict[str, Any]) -> dict[str, str]:
    """``code`` and ``message`` as the SDK reads them: a missing or null field
    is "" (the SDK's None), never "None"."""
    code, message = err.get("code"), err.get("message")
    return {
        "code": "" if code is None else str(code),
        "message": "" if message is None else str(message),
    }


def errors(interaction: dict[str, Any]) -> dict[str, Any] | None:
    """The upstream's own account of a failure: ``errors[]`` and any
    ``model_output.error`` status."""
    listed = interaction.get("errors")
    found = (
        [_error_entry(e) for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
    )
    for step in trailing_model_outputs(interaction):
        err = step.get("error")
        if isinstance(err, dict):
            found.append(_error_entry(err))
    if not found:
        return None
    return {"code": "upstream_failed", "message": found[0]["message"], "upstream": found}


_DIGITS = re.compile(r"\s*[+-]?[0-9]+\s*")


def _count(value: Any) -> int | None:
    """An integer field as the SDK's pydantic model reads it (lax mode): an
    int, a float with no fraction, or a string of digits ("12", as proto3
    JSON writes int64)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


def token_counts(usage: Any) -> dict[str, int]:
    """The ``total_*_tokens`` counts above zero, by interq's kind names."""
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    for field, kind in USAGE_KINDS.items():
        v = _count(usage.get(field))
        if v is not None and v > 0:
            out[kind] = v
    return out
