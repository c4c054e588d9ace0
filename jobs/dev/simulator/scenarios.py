"""What an interaction does, decided at create time: the ``[sim key=value ...]``
directive in its input, the timeline of statuses it walks through, and the
answer steps it ends with. Pure functions over the interaction record."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from jobs.dev.simulator.wire import (
    CONTENT_TYPES,
    JSON,
    OUTCOMES,
    OUTPUTS,
    PNG_B64,
    TERMINAL,
    WAV_B64,
    new_id,
)

ECHOED = (
    "model agent labels previous_interaction_id system_instruction tools generation_config"
    " response_format agent_config environment webhook_config"
).split()
_ALLOWED = {("outcome", o) for o in OUTCOMES} | {("output", o) for o in OUTPUTS}
DIRECTIVE = re.compile(r"\[sim(?P<kv>(?:\s+[A-Za-z_]+=[^\s\]]*)*)\s*\]")


def extract_texts(value: Any) -> list[str]:
    """All text parts of an input (string, content, contents, steps)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in extract_texts(item)]
    if isinstance(value, dict):
        out = [value["text"]] if isinstance(value.get("text"), str) else []
        return out + extract_texts(value.get("content"))
    return []


def parse_directive(text: str) -> JSON:
    """Parse ``[sim key=value ...]``; raises ValueError on bad keys/values."""
    spec: JSON = {}
    for m in DIRECTIVE.finditer(text):
        for pair in m.group("kv").split():
            key, _, val = pair.partition("=")
            if key == "duration":
                spec["duration"] = float(val)
                if spec["duration"] < 0:
                    raise ValueError("duration must be >= 0")
            elif (key, val) in _ALLOWED:
                spec[key] = val
            else:
                raise ValueError(f"bad sim directive entry {pair!r}")
    return spec


def input_steps(inp: Any) -> list[JSON]:
    if inp is None:
        return []
    if isinstance(inp, str):
        return [{"type": "user_input", "content": [{"type": "text", "text": inp}]}]
    items = inp if isinstance(inp, list) else [inp]
    if all(isinstance(i, dict) and i.get("type") in CONTENT_TYPES for i in items):
        return [{"type": "user_input", "content": items}]
    return [i for i in items if isinstance(i, dict)]


def timeline(outcome: str, d: float) -> list[tuple[float, str]]:
    """(seconds after start, status) for each change an outcome goes through."""
    if outcome == "never":
        return [(0.0, "in_progress")]
    if outcome == "unknown":
        return [(0.0, "paused_for_review"), (d, "in_progress"), (2 * d, "completed")]
    if outcome == "queued":
        return [(0.0, "queued"), (d / 2, "in_progress"), (d, "completed")]
    final = outcome if outcome in TERMINAL or outcome.startswith("requires_") else "completed"
    return [(0.0, "idle" if outcome == "idle" else "in_progress"), (d, final)]


def phase(rec: JSON, now: float) -> tuple[str, float, bool]:
    """(status, seconds after start of the last change, settled)."""
    elapsed = now - rec["start"]
    cancelled = rec["cancelled_at"] is not None
    if cancelled:
        elapsed = min(elapsed, rec["cancelled_at"] - rec["start"])
    tl = timeline(rec["outcome"], rec["duration"])
    idx = max(i for i, (t, _) in enumerate(tl) if t <= elapsed)
    settled = len(tl) > 1 and idx == len(tl) - 1
    if cancelled:
        return "cancelled", rec["cancelled_at"] - rec["start"], settled
    return tl[idx][1], tl[idx][0], settled


def answer_text(
    texts: list[str], output: str, results: list[JSON], prev: JSON | None, continued: bool
) -> str:
    """The text the model 'answers': the rest of a continued answer, a line
    using a function result, a JSON object, or a plain echo of the input."""
    snippet = DIRECTIVE.sub("", " ".join(texts)).strip()[:60]
    if continued and prev is not None:
        return str(prev["rest_text"])
    if results:
        name, result = results[0].get("name", "function"), json.dumps(results[0].get("result"))
        return f"Simulated answer using {name} result: {result}"
    if output == "json":
        return json.dumps({"answer": 42, "input": snippet})
    return f"Simulated answer to: {snippet}"


def echo_of(body: JSON) -> JSON:
    """The create-body fields an interaction echoes back."""
    echo = {k: body[k] for k in ECHOED if k in body}
    echo["service_tier"] = body.get("service_tier", "standard")
    if "environment" in body:
        env = body["environment"]
        echo["environment_id"] = (
            env if isinstance(env, str) and env != "remote" else new_id("env_", 9)
        )
    return echo


def result_steps(rec: JSON, body: JSON, text: str, output: str, calls: Iterator[int]) -> list[JSON]:
    """The steps an interaction ends with; sets ``pending_calls`` or the
    continuation fields of ``rec`` for the outcomes that need them."""
    outcome, thought = rec["outcome"], {"type": "thought", "signature": "c2ln"}
    half = text[: max(1, len(text) // 2)]
    if outcome in ("cancelled", "never"):
        return []
    if outcome == "failed":
        return [{"type": "model_output", "error": {"code": 13, "message": "Simulated failure"}}]
    if outcome in ("incomplete", "budget_exceeded"):
        return [thought, {"type": "model_output", "content": [{"type": "text", "text": half}]}]
    if outcome == "requires_action":
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        names = [str(t.get("name")) for t in tools if t.get("type") == "function"]
        call: JSON = {"type": "function_call", "id": f"call_{next(calls)}"}
        call |= {"name": (names or ["get_weather"])[0], "arguments": {"city": "Paris"}}
        rec["pending_calls"] = [call["id"]]
        return [thought, call]
    if outcome == "requires_continuation":
        rec["continuation_token"] = new_id("ct_")
        rec["rest_text"] = text[len(half) :]
        return [thought, {"type": "model_output", "content": [{"type": "text", "text": half}]}]
    content: list[JSON] = [{"type": "text", "text": text}]
    if output == "image":
        content.append({"type": "image", "data": PNG_B64, "mime_type": "image/png"})
    elif output == "audio":
        content.append({"type": "audio", "data": WAV_B64, "mime_type": "audio/wav"})
    return [thought, {"type": "model_output", "content": content}]
