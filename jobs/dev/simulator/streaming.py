"""The simulator's stream of a background interaction:
``GET /{ver}/interactions/{id}?stream=true[&last_event_id=...]`` (the
reference, section 8).

Each interaction has one fixed list of events, each due at a time after its
start: ``interaction.created``, ``interaction.status_update`` (in_progress),
for each answer step ``step.start``, its text (and thought summaries) as
``step.delta`` pieces spread over the run, ``step.stop``, then at the end the
final ``interaction.status_update`` and ``interaction.completed`` (reduced: no
steps), and ``data: [DONE]``. Every payload has an ``event_id`` (also the SSE
``id:``); ``last_event_id`` resumes after that event, none replays from the
start. A stream is cut after ``stream_cut_s`` (the API's 10-minute cut) and,
with ``stream_drop_after`` set, after that many events: both end without
``[DONE]``, as a dropped connection does. A cancelled interaction's stream
sends its ``cancelled`` status and ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from jobs.dev.simulator.scenarios import timeline
from jobs.dev.simulator.wire import JSON, error_body

PIECES = 6  # text pieces per text part


def _pieces(text: str, n: int = PIECES) -> list[str]:
    """``text`` in about ``n`` pieces that join back to it exactly."""
    if not text:
        return []
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _step_deltas(step: JSON) -> list[JSON]:
    if step.get("type") == "thought":
        summary = step.get("summary") or []
        texts = [s.get("text", "") for s in summary if isinstance(s, dict)]
        return [{"type": "thought_summary", "content": {"type": "text", "text": t}} for t in texts]
    out: list[JSON] = []
    for item in step.get("content") or []:
        if isinstance(item, dict) and item.get("type") == "text":
            out += [{"type": "text", "text": piece} for piece in _pieces(str(item.get("text")))]
        elif isinstance(item, dict):
            out.append(dict(item))
    return out


def plan(rec: JSON) -> list[tuple[float, JSON]]:
    """Every event of the interaction: (seconds after its start, payload)."""
    tl = timeline(rec["outcome"], rec["duration"])
    end = tl[-1][0] if len(tl) > 1 else None
    span = end if end is not None else rec["duration"]
    created = {"event_type": "interaction.created", "interaction": _head(rec, tl[0][1])}
    events: list[tuple[float, JSON]] = [(0.0, created), (0.0, _status(rec, tl[0][1]))]
    body = _step_events(rec["result_steps"] if end is not None else [])
    for n, payload in enumerate(body):
        events.append((span * 0.1 + span * 0.8 * n / max(1, len(body)), payload))
    if end is not None:
        final = _status(rec, tl[-1][1]) | {"usage": rec["usage"]}
        done = _head(rec, tl[-1][1]) | {"usage": rec["usage"]}
        completed = {"event_type": "interaction.completed", "interaction": done}
        events += [(end, final), (end, completed)]
    return [(at, {**p, "event_id": f"evt_{n:05d}"}) for n, (at, p) in enumerate(events)]


def _step_events(steps: list[JSON]) -> list[JSON]:
    out: list[JSON] = []
    for index, step in enumerate(steps):
        header = {k: v for k, v in step.items() if k not in ("content", "summary")}
        out.append({"event_type": "step.start", "index": index, "step": header})
        deltas = _step_deltas(step)
        out += [{"event_type": "step.delta", "index": index, "delta": d} for d in deltas]
        out.append({"event_type": "step.stop", "index": index})
    return out


def _head(rec: JSON, status: str) -> JSON:
    return {"id": rec["id"], "object": "interaction", "status": status}


def _status(rec: JSON, status: str) -> JSON:
    return {"event_type": "interaction.status_update", "interaction_id": rec["id"]} | {
        "status": status
    }


def _frame(payload: JSON) -> bytes:
    return f"id: {payload['event_id']}\ndata: {json.dumps(payload)}\n\n".encode()


async def _events(sim: Any, rec: JSON, after: str | None) -> AsyncIterator[bytes]:
    events = plan(rec)
    ids = [p["event_id"] for _, p in events]
    start = ids.index(after) + 1 if after in ids else 0
    opened, sent = time.monotonic(), 0
    cut, drop = sim.config.stream_cut_s, sim.config.stream_drop_after
    for at, payload in events[start:]:
        while (wait := rec["start"] + at - time.monotonic()) > 0:
            if sim.status(rec) == "cancelled":
                yield _frame({**_status(rec, "cancelled"), "event_id": f"evt_c{sent:05d}"})
                yield b"data: [DONE]\n\n"
                return
            left = cut - (time.monotonic() - opened)
            if left <= 0:
                return  # the 10-minute cut: no [DONE]
            await asyncio.sleep(min(wait, left, 0.05))
        yield _frame(payload)
        sent += 1
        if drop and sent >= drop:
            return  # a dropped connection
    yield b"data: [DONE]\n\n"


def serve(sim: Any, iid: str, last_event_id: str | None) -> Response:
    rec = sim.interactions.get(iid)
    if rec is None:
        return JSONResponse(error_body(404, f"Interaction {iid} not found."), status_code=404)
    return StreamingResponse(_events(sim, rec, last_event_id), media_type="text/event-stream")
