"""What an interaction does, decided at create time: the ``[sim key=value ...]``
directive in its input, the timeline of statuses it walks through, and the
answer steps it ends with. Pure functions over the interaction record.

The directive's keys: ``duration=<seconds>``, ``outcome=<wire.OUTCOMES>``,
``output=<wire.OUTPUTS>``, ``shape=<wire.SHAPES>`` and ``fail_first=<n>`` (the
first n creates of the same input text end ``failed``, later ones as the
directive says: a model that was overloaded for a while). A shape gives the harder
step shapes the SDK's own ``output_text`` cases have (``SHAPE_BUILDERS``): text
before and after tool steps, text around images, several function-call rounds
(a function result answering a ``multi_round`` pause gets the next round),
parallel calls, a pause that only asks a question, errors as the API lists
them, and a cancel whose ``cancelled`` shows only after a few more polls (the
API's server-side clean-up: the status stays ``in_progress`` meanwhile)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from jobs.dev.simulator.wire import (
    CONTENT_TYPES,
    JSON,
    MULTI_ROUNDS,
    OUTCOMES,
    OUTPUTS,
    PNG_B64,
    SHAPE_OUTCOMES,
    SHAPES,
    TERMINAL,
    WAV_B64,
    new_id,
)

ECHOED = (
    "model agent labels previous_interaction_id system_instruction tools generation_config"
    " response_format agent_config environment webhook_config"
).split()
_ALLOWED = {("outcome", o) for o in OUTCOMES} | {("output", o) for o in OUTPUTS}
_ALLOWED |= {("shape", s) for s in SHAPES}
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
            elif key == "fail_first" and val.isdigit():
                spec["fail_first"] = int(val)
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
        done = "in_progress" if rec.get("cancelling_left") else "cancelled"
        return done, rec["cancelled_at"] - rec["start"], settled
    return tl[idx][1], tl[idx][0], settled


def answer_text(
    texts: list[str], output: str, results: list[JSON], prev: JSON | None, continued: bool
) -> str:
    """The text the model 'answers': the rest of a continued answer, a line
    using a function result, a JSON object, or a plain echo of the input."""
    snippet = DIRECTIVE.sub("", " ".join(texts)).strip()[:60]
    if continued and prev is not None:
        return str(prev["rest_text"])
    if len(results) > 1:
        names = ", ".join(str(r.get("name", "function")) for r in results)
        return f"Simulated answer using {len(results)} results: {names}"
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
    if rec["shape"] in SHAPE_BUILDERS:
        return SHAPE_BUILDERS[rec["shape"]](rec, body, text, calls)
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


def plan(spec: JSON, prev: JSON | None, results: list[JSON]) -> tuple[str | None, str, int]:
    """(shape, outcome, round) of a new interaction: the directive's, or the
    next round of a ``multi_round`` pause its function results answer."""
    if "shape" not in spec and results and prev is not None and prev["shape"] == "multi_round":
        rnd = prev["round"] + 1
        return "multi_round", "requires_action" if rnd <= MULTI_ROUNDS else "completed", rnd
    shape = spec.get("shape")
    fixed = SHAPE_OUTCOMES.get(shape) if shape is not None else None
    outcome = str(spec.get("outcome", fixed or "completed"))
    if fixed is not None and outcome != fixed:
        raise ValueError(f"shape={shape} is outcome={fixed}")
    return shape, outcome, 1


def usage_of(texts: list[str], steps: list[JSON]) -> JSON:
    """Token counts: about four characters a token, thoughts and tool steps
    counted on their own lines (``total_tokens`` sums them all)."""
    n_in = len(" ".join(texts)) // 4 + 1
    n_out = sum(len(t) for t in extract_texts(steps)) // 4 + 1
    n_thought = 8 * sum(1 for s in steps if s.get("type") == "thought")
    n_tool = 16 * sum(1 for s in steps if str(s.get("type")).startswith("google_search"))
    usage: JSON = {"total_tokens": n_in + n_out + n_thought + n_tool, "total_input_tokens": n_in}
    usage |= {"total_output_tokens": n_out, "total_cached_tokens": 0}
    usage["output_tokens_by_modality"] = [{"modality": "text", "tokens": n_out}]
    if n_thought:
        usage["total_thought_tokens"] = n_thought
    if n_tool:
        usage["total_tool_use_tokens"] = n_tool
    return usage


# --- shapes ---------------------------------------------------------------
THOUGHT: JSON = {"type": "thought", "signature": "c2ln"}
IMAGE: JSON = {"type": "image", "data": PNG_B64, "mime_type": "image/png"}
CITIES = ("Paris", "Tokyo", "Lima")


def _say(*parts: str | JSON) -> JSON:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"type": "model_output", "content": content}


def _calls(rec: JSON, body: JSON, calls: Iterator[int], cities: tuple[str, ...]) -> list[JSON]:
    """Function calls for ``cities`` (the body's function tools in turn), kept
    as the record's pending calls."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    names = [str(t.get("name")) for t in tools if t.get("type") == "function"] or ["get_weather"]
    out = [
        {
            "type": "function_call",
            "id": f"call_{next(calls)}",
            "name": names[i % len(names)],
            "arguments": {"city": city},
        }
        for i, city in enumerate(cities)
    ]
    rec["pending_calls"] = [c["id"] for c in out]
    return out


def _search(calls: Iterator[int], query: str) -> list[JSON]:
    cid = f"search_{next(calls)}"
    call = {"type": "google_search_call", "id": cid, "arguments": {"queries": [query]}}
    result = {"type": "google_search_result", "call_id": cid}
    return [call, result | {"result": [{"search_suggestions": "<div>simulated</div>"}]}]


def _tool_boundary(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    search = _search(calls, text[:40])
    head = [THOUGHT, _say("Before tool call. "), *search]
    return [*head, THOUGHT, _say("Final part 1. "), THOUGHT, _say(text)]


def _tool_then_call(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    search = _search(calls, text[:40])
    tail = [_say("Now a function. "), *_calls(rec, body, calls, CITIES[:1])]
    return [THOUGHT, _say("Searching first. "), *search, THOUGHT, *tail]


def _image_barrier(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    return [THOUGHT, _say("Chart: ", IMAGE), THOUGHT, _say("Caption. ", IMAGE, text)]


def _multi_round(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    if rec["outcome"] == "completed":
        return [THOUGHT, _say(text)]
    city = CITIES[(rec["round"] - 1) % len(CITIES)]
    say = _say(f"Round {rec['round']}: checking {city}. ")
    return [THOUGHT, say, *_calls(rec, body, calls, (city,))]


def _parallel_calls(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    return [THOUGHT, *_calls(rec, body, calls, CITIES)]


def _question(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    return [THOUGHT, _say("Which city do you mean?")]


def _error_list(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    base = "https://generativelanguage.googleapis.com/errors/"
    rec["errors"] = [
        {"code": base + "resource-exhausted", "message": "Simulated quota exhausted"},
        {"code": base + "internal", "message": "Simulated backend failure"},
    ]
    return [THOUGHT, _say(text[: max(1, len(text) // 2)])]


def _error_status(rec: JSON, body: JSON, text: str, calls: Iterator[int]) -> list[JSON]:
    rec["errors"] = [
        {"code": "RESOURCE_EXHAUSTED", "message": "Simulated rate limit"},
        {"message": "Simulated error without a code"},
    ]
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED"}
    status = {"code": 8, "message": "Simulated rate limit", "details": [info]}
    return [THOUGHT, {"type": "model_output", "error": status}]


ShapeBuilder = Callable[[JSON, JSON, str, Iterator[int]], list[JSON]]
SHAPE_BUILDERS: dict[str, ShapeBuilder] = {
    "tool_boundary": _tool_boundary,
    "tool_then_call": _tool_then_call,
    "image_barrier": _image_barrier,
    "multi_round": _multi_round,
    "parallel_calls": _parallel_calls,
    "question": _question,
    "error_list": _error_list,
    "error_status": _error_status,
}
