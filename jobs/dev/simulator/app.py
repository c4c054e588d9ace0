"""In-memory simulator of the Gemini Interactions API (dev, tests, benchmarks).

Speaks ``/{v1,v1beta}/interactions`` create/get/cancel/delete with the wire
shapes of the reference (steps schema, google.rpc-style errors, RetryInfo on
429, no Retry-After header). State lives in dicts in this process; time is
real ``time.monotonic()`` but every duration is configurable.

Per-interaction behaviour is picked by a directive anywhere in the input text,
``[sim key=value ...]`` (keys ``duration``, ``outcome``, ``output``), e.g.
``"Write a haiku [sim duration=0.5 outcome=failed]"``.

Faults (probabilities drawn from ``random.Random(seed)``, one draw per request
of an op in ``fault_ops``):

* ``429`` / ``5xx``: google-shaped error bodies (5xx alternates 500/503).
* ``timeout``: the server sleeps ``slow_s`` and then answers normally. For a
  create with ``faults_after_create=False`` the sleep happens first and the
  interaction is only created if the client is still connected; with
  ``faults_after_create=True`` it is created before the sleep (response lost).
* ``drop``: the server sends response headers and then aborts by raising
  :class:`SimulatedDrop`. Under uvicorn that closes the socket mid-response, so
  an httpx client sees ``httpx.RemoteProtocolError``; under
  ``httpx.ASGITransport`` the exception (a ``RemoteProtocolError`` subclass)
  reaches the client directly.

Webhooks (the API's own, reference section 9): when a background interaction
reaches ``completed``, ``failed``, ``cancelled`` (by its timeline or by the cancel
endpoint) or ``requires_action``, an ``interaction.<status>`` event is POSTed
once to every URI: the create body's ``webhook_config.uris`` if given (they are
used *instead of* the registered webhooks, as the SDK's ``WebhookConfig``
docstring says), else the project-level ``SimConfig.webhook_urls`` read when
the event fires. A ``loop.call_later`` timer armed at create time fires at the
end of the duration, so no GET is needed. Deliveries are background tasks
signed in the Standard Webhooks format with ``SimConfig.webhook_secret`` (sent
unsigned when it is None; the real API signs dynamic deliveries with an RS256
JWT instead, which is not simulated). ``webhook-id`` is one ``evt_...`` per
event, stable across retries and URIs; a failed attempt (non-2xx or a
connection error) is retried after each delay of ``webhook_retry_s`` and then
dropped. Every attempt is recorded in ``Simulator.webhook_log`` (``GET
/_sim/webhooks``). Faults never apply to webhooks. Not sent: events for
``incomplete``, ``budget_exceeded`` and ``requires_continuation`` (none is
documented), events for deleted interactions, and events for synchronous
(``background=false``) interactions.

Not simulated: SSE streaming (``stream=true`` gets a 400), agents'
environments beyond echoing, per-day quotas, ``include_input``, the
WebhookService endpoints and ``subscribed_events`` filtering.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from jobs.delivery.signing import headers_for

JSON = dict[str, Any]

OUTCOMES = (
    "completed failed cancelled incomplete budget_exceeded requires_action requires_continuation"
    " cancel404 never unknown not_found_first queued idle"
).split()
OUTPUTS = ("text", "json", "image", "audio")
TERMINAL = {"completed", "failed", "cancelled", "incomplete", "budget_exceeded"}
PENDING = {"queued", "in_progress", "idle", "paused_for_review"}
CONTENT_TYPES = {"text", "image", "audio", "video", "document"}
# 1x1 RGB PNG and an 8-sample 16-bit mono WAV, both valid files.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)
WAV_B64 = "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA"
_ECHOED = (
    "model agent labels previous_interaction_id system_instruction tools generation_config"
    " response_format agent_config environment webhook_config"
).split()
_ALLOWED = {("outcome", o) for o in OUTCOMES} | {("output", o) for o in OUTPUTS}
_DIRECTIVE = re.compile(r"\[sim(?P<kv>(?:\s+[A-Za-z_]+=[^\s\]]*)*)\s*\]")
_ERR_URI = "https://generativelanguage.googleapis.com/errors/internal"
_QUOTA_FAILURE = {
    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
    "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests"}],
}
# Final status -> webhook event type (reference section 9).
WEBHOOK_EVENTS = {
    "completed": "interaction.completed",
    "failed": "interaction.failed",
    "cancelled": "interaction.cancelled",
    "requires_action": "interaction.requires_action",
}
WEBHOOK_TIMEOUT_S = 5.0  # per attempt; the API expects receivers to answer in a few seconds
_log = logging.getLogger(__name__)
_GRPC = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass
class SimConfig:
    duration_s: float = 2.0
    api_key: str | None = None
    seed: int = 0
    fault_429: float = 0.0
    fault_5xx: float = 0.0
    fault_timeout: float = 0.0
    fault_drop: float = 0.0
    slow_s: float = 30.0
    retry_delay_s: float = 1.0
    quota_rpm: int | None = None
    quota_window_s: float = 60.0  # window length for quota_rpm (sliding)
    fault_ops: set[str] = field(default_factory=lambda: {"create", "get", "cancel"})
    faults_after_create: bool = False
    # Project-level ("static") webhooks: every background interaction's events go
    # here unless its create body names its own ``webhook_config.uris``.
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: str | None = None  # whsec_... used to sign deliveries (None: unsigned)
    webhook_retry_s: list[float] = field(default_factory=lambda: [0.2, 0.5, 1.0])


class SimulatedDrop(httpx.RemoteProtocolError):
    """Raised after the response start to abort the connection (drop fault)."""


class _DropResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise SimulatedDrop("simulated dropped connection")


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


_QUIET_DROPS = _QuietDrops()


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or _GRPC[code]


def error_body(
    code: int, message: str, status: str | None = None, details: list[JSON] | None = None
) -> JSON:
    err: JSON = {"code": code, "message": message, "status": status or _GRPC[code]}
    if details is not None:
        err["details"] = details
    return {"error": err}


def retry_delay_str(seconds: float) -> str:
    """Format like google.protobuf.Duration JSON (``"1.5s"``)."""
    return f"{max(seconds, 0.0):.9f}".rstrip("0").rstrip(".") + "s"


def retry_info(seconds: float) -> JSON:
    return {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": retry_delay_str(seconds),
    }


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _check_secret(value: Any) -> None:
    ok = isinstance(value, str) and value.startswith("whsec_")
    if ok:
        try:
            ok = bool(base64.b64decode(value.removeprefix("whsec_"), validate=True))
        except ValueError:
            ok = False
    if not ok:
        raise ApiError(400, "webhook_secret must be whsec_ followed by base64.")


def _check_webhook_config(wc: Any) -> None:
    if not isinstance(wc, dict) or set(wc) - {"uris", "user_metadata"}:
        raise ApiError(400, "webhook_config must be an object with 'uris' and 'user_metadata'.")
    uris = wc.get("uris")
    if uris is not None and not (isinstance(uris, list) and all(map(_is_http_url, uris))):
        raise ApiError(400, "webhook_config.uris must be a list of http(s) URIs.")
    if wc.get("user_metadata") is not None and not isinstance(wc["user_metadata"], dict):
        raise ApiError(400, "webhook_config.user_metadata must be an object.")


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
    for m in _DIRECTIVE.finditer(text):
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


def _input_steps(inp: Any) -> list[JSON]:
    if inp is None:
        return []
    if isinstance(inp, str):
        return [{"type": "user_input", "content": [{"type": "text", "text": inp}]}]
    items = inp if isinstance(inp, list) else [inp]
    if all(isinstance(i, dict) and i.get("type") in CONTENT_TYPES for i in items):
        return [{"type": "user_input", "content": items}]
    return [i for i in items if isinstance(i, dict)]


def _timeline(outcome: str, d: float) -> list[tuple[float, str]]:
    if outcome == "never":
        return [(0.0, "in_progress")]
    if outcome == "unknown":
        return [(0.0, "paused_for_review"), (d, "in_progress"), (2 * d, "completed")]
    if outcome == "queued":
        return [(0.0, "queued"), (d / 2, "in_progress"), (d, "completed")]
    final = outcome if outcome in TERMINAL or outcome.startswith("requires_") else "completed"
    return [(0.0, "idle" if outcome == "idle" else "in_progress"), (d, final)]


class Simulator:
    """In-memory state of one simulated API endpoint (``app.state.sim``)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.interactions: dict[str, JSON] = {}
        self.requests: list[JSON] = []
        self.created: list[dict[str, str]] = []  # labels of every real creation
        self._calls = 0
        # One entry per delivery attempt: t, event_id, type, interaction_id, uri,
        # attempt (1-based), status (HTTP status or None) and error (str or None).
        self.webhook_log: list[JSON] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}  # interaction id -> end-of-run timer
        self._tasks: set[asyncio.Task[None]] = set()  # deliveries in flight
        self._client: httpx.AsyncClient | None = None  # for webhooks
        self.reset()

    def reset(self) -> None:
        self._cancel_pending()
        self.interactions.clear()
        self.requests.clear()
        self.created.clear()
        self.webhook_log.clear()
        self.rng = random.Random(self.config.seed)
        self._quota: deque[float] = deque()

    def creates_by_label(self, key: str) -> dict[str, int]:
        return dict(Counter(labels[key] for labels in self.created if key in labels))

    def stats(self) -> JSON:
        ops = [r["op"] for r in self.requests]
        codes = [r["status"] or 0 for r in self.requests]
        return {
            "creates": ops.count("create"),
            "created": len(self.created),
            "gets": ops.count("get"),
            "cancels": ops.count("cancel"),
            "deletes": ops.count("delete"),
            "status_429": codes.count(429),
            "status_5xx": sum(1 for c in codes if c >= 500),
            "creates_by_job": self.creates_by_label("interq_job"),
        }

    def update_config(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ApiError(400, "config update must be a JSON object")
        bad = set(data) - {f.name for f in fields(SimConfig)}
        if bad:
            raise ApiError(400, f"unknown config fields: {sorted(bad)}")
        urls = data.get("webhook_urls", [])
        if not (isinstance(urls, list) and all(map(_is_http_url, urls))):
            raise ApiError(400, "webhook_urls must be a list of http(s) URLs.")
        if data.get("webhook_secret") is not None:
            _check_secret(data["webhook_secret"])
        delays = data.get("webhook_retry_s", [])
        if not (isinstance(delays, list) and all(isinstance(d, int | float) for d in delays)):
            raise ApiError(400, "webhook_retry_s must be a list of numbers.")
        for k, v in data.items():
            setattr(self.config, k, set(v) if k == "fault_ops" else v)
        if "seed" in data:
            self.rng = random.Random(self.config.seed)

    def _new_id(self, prefix: str, nbytes: int = 18) -> str:
        # drawn at random, never from the seed: ids never repeat across restarts
        return prefix + base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode().rstrip("=")

    # --- faults -----------------------------------------------------------
    def roll_fault(self, op: str) -> str | None:
        c = self.config
        if op not in c.fault_ops:
            return None
        r, acc = self.rng.random(), 0.0
        for name, p in (
            ("429", c.fault_429),
            ("5xx", c.fault_5xx),
            ("timeout", c.fault_timeout),
            ("drop", c.fault_drop),
        ):
            acc += p
            if r < acc:
                return name
        return None

    def quota_delay(self, now: float) -> float | None:
        rpm, window = self.config.quota_rpm, self.config.quota_window_s
        if rpm is None:
            return None
        while self._quota and self._quota[0] <= now - window:
            self._quota.popleft()
        if len(self._quota) >= rpm:
            return self._quota[0] + window - now
        self._quota.append(now)
        return None

    # --- state machine ----------------------------------------------------
    def _phase(self, rec: JSON, now: float) -> tuple[str, float, bool]:
        """(status, seconds after start of the last change, settled)."""
        elapsed = now - rec["start"]
        cancelled = rec["cancelled_at"] is not None
        if cancelled:
            elapsed = min(elapsed, rec["cancelled_at"] - rec["start"])
        tl = _timeline(rec["outcome"], rec["duration"])
        idx = max(i for i, (t, _) in enumerate(tl) if t <= elapsed)
        settled = len(tl) > 1 and idx == len(tl) - 1
        if cancelled:
            return "cancelled", rec["cancelled_at"] - rec["start"], settled
        return tl[idx][1], tl[idx][0], settled

    def status(self, rec: JSON) -> str:
        return self._phase(rec, time.monotonic())[0]

    def render(self, rec: JSON, *, full: bool = True) -> JSON:
        status, changed, settled = self._phase(rec, time.monotonic())
        out: JSON = {"id": rec["id"], "object": "interaction", "status": status}
        out.update(rec["echo"])
        out["created"], out["updated"] = _iso(rec["wall"]), _iso(rec["wall"] + changed)
        steps = list(rec["input_steps"]) if full else []
        if settled:
            steps += rec["result_steps"]
        if settled or status == "cancelled":
            out["usage"] = rec["usage"]
        out["steps"] = steps
        if status == "failed":
            out["errors"] = [{"code": _ERR_URI, "message": "Simulated failure"}]
        if status == "requires_continuation":
            out["continuation_token"] = rec["continuation_token"]
        return out

    def _get(self, iid: str) -> JSON:
        rec = self.interactions.get(iid)
        if rec is None:
            raise ApiError(404, f"Interaction {iid} not found.")
        return rec

    # --- operations -------------------------------------------------------
    def create(self, body: JSON) -> tuple[JSON, str]:
        if ("model" in body) == ("agent" in body):
            raise ApiError(400, "Exactly one of 'model' or 'agent' must be set.")
        keys = body.keys()
        if {"agent", "generation_config"} <= keys or {"model", "agent_config"} <= keys:
            raise ApiError(400, "generation_config is for models, agent_config for agents.")
        background = bool(body.get("background", False))
        store = body.get("store", True) is not False
        if background and not store:
            raise ApiError(400, "background=true requires store=true.")
        if body.get("stream"):
            raise ApiError(400, "stream=true is not supported by the simulator.")
        if "webhook_config" in body and not background:
            raise ApiError(400, "webhook_config requires background=true.")
        if "webhook_config" in body:
            _check_webhook_config(body["webhook_config"])
        token, prev_id = body.get("continuation_token"), body.get("previous_interaction_id")
        inp = body.get("input")
        if inp is None and token is None:
            raise ApiError(400, "'input' is required.")
        texts = extract_texts(inp)
        try:
            spec = parse_directive(" ".join(texts))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        prev = None
        if prev_id is not None:
            prev = self._get(prev_id)
            if self.status(prev) in PENDING:
                raise ApiError(400, "The previous interaction is still in progress.")
        if token is not None and (
            prev is None
            or self.status(prev) != "requires_continuation"
            or prev["continuation_token"] != token
        ):
            raise ApiError(400, "Invalid continuation_token.")
        in_steps = _input_steps(inp)
        results = [s for s in in_steps if s.get("type") == "function_result"]
        if results and prev is not None and self.status(prev) == "requires_action":
            if any(s.get("call_id") not in prev["pending_calls"] for s in results):
                raise ApiError(
                    400, "function_result.call_id does not match a pending function_call."
                )
        outcome, output = spec.get("outcome", "completed"), spec.get("output", "text")
        snippet = _DIRECTIVE.sub("", " ".join(texts)).strip()[:60]
        if token is not None and prev is not None:
            text = prev["rest_text"]
        elif results:
            name, result = results[0].get("name", "function"), json.dumps(results[0].get("result"))
            text = f"Simulated answer using {name} result: {result}"
        elif output == "json":
            text = json.dumps({"answer": 42, "input": snippet})
        else:
            text = f"Simulated answer to: {snippet}"
        iid = self._new_id("v1_")
        rec: JSON = {
            "id": iid,
            "start": time.monotonic(),
            "wall": time.time(),
            "duration": spec.get("duration", self.config.duration_s) if background else 0.0,
            "outcome": outcome,
            "cancelled_at": None,
            "gets": 0,
            "input_steps": in_steps,
            "pending_calls": [],
            "continuation_token": None,
            "rest_text": "",
            "echo": self._echo(body),
            "background": background,
            "events": set(),  # webhook event types already emitted
        }
        rec["result_steps"] = self._result_steps(rec, body, text, output)
        out_len = sum(len(t) for t in extract_texts(rec["result_steps"]))
        n_in, n_out = len(" ".join(texts)) // 4 + 1, out_len // 4 + 1
        usage = {"total_tokens": n_in + n_out, "total_input_tokens": n_in}
        rec["usage"] = usage | {"total_output_tokens": n_out}
        if store:
            self.interactions[iid] = rec
            if background:
                self._arm_end_timer(rec)
        self.created.append(dict(body.get("labels") or {}))
        if background:
            keep = ("model", "agent", "labels", "previous_interaction_id", "service_tier")
            resp = {k: v for k, v in self.render(rec).items() if k in keep}
            resp.update(id=iid, object="interaction", status=self.status(rec))
            resp["created"] = resp["updated"] = _iso(rec["wall"])
            return resp, iid
        return self.render(rec, full=False), iid

    def _echo(self, body: JSON) -> JSON:
        echo = {k: body[k] for k in _ECHOED if k in body}
        echo["service_tier"] = body.get("service_tier", "standard")
        if "environment" in body:
            env = body["environment"]
            echo["environment_id"] = (
                env if isinstance(env, str) and env != "remote" else self._new_id("env_", 9)
            )
        return echo

    def _result_steps(self, rec: JSON, body: JSON, text: str, output: str) -> list[JSON]:
        outcome, thought = rec["outcome"], {"type": "thought", "signature": "c2ln"}
        half = text[: max(1, len(text) // 2)]
        if outcome in ("cancelled", "never"):
            return []
        if outcome == "failed":
            return [{"type": "model_output", "error": {"code": 13, "message": "Simulated failure"}}]
        if outcome in ("incomplete", "budget_exceeded"):
            return [thought, {"type": "model_output", "content": [{"type": "text", "text": half}]}]
        if outcome == "requires_action":
            self._calls += 1
            tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
            names = [str(t.get("name")) for t in tools if t.get("type") == "function"]
            call: JSON = {"type": "function_call", "id": f"call_{self._calls}"}
            call |= {"name": (names or ["get_weather"])[0], "arguments": {"city": "Paris"}}
            rec["pending_calls"] = [call["id"]]
            return [thought, call]
        if outcome == "requires_continuation":
            rec["continuation_token"] = self._new_id("ct_")
            rec["rest_text"] = text[len(half) :]
            return [thought, {"type": "model_output", "content": [{"type": "text", "text": half}]}]
        content: list[JSON] = [{"type": "text", "text": text}]
        if output == "image":
            content.append({"type": "image", "data": PNG_B64, "mime_type": "image/png"})
        elif output == "audio":
            content.append({"type": "audio", "data": WAV_B64, "mime_type": "audio/wav"})
        return [thought, {"type": "model_output", "content": content}]

    def get(self, iid: str) -> JSON:
        rec = self._get(iid)
        rec["gets"] += 1
        if rec["outcome"] == "not_found_first" and rec["gets"] <= 2:
            raise ApiError(404, f"Interaction {iid} not found.")
        return self.render(rec)

    def cancel(self, iid: str) -> JSON:
        rec = self._get(iid)
        if rec["outcome"] == "cancel404":
            raise ApiError(404, "Method not found.")
        if self.status(rec) in TERMINAL:
            raise ApiError(
                400, "Interaction is already in a terminal state.", "FAILED_PRECONDITION"
            )
        rec["cancelled_at"] = time.monotonic()
        self._disarm(iid)
        if rec["background"]:
            self._emit(rec, "interaction.cancelled")
        return self.render(rec)

    def delete(self, iid: str) -> JSON:
        self._get(iid)
        self._disarm(iid)
        del self.interactions[iid]
        return {}

    # --- outgoing webhooks --------------------------------------------------
    def _arm_end_timer(self, rec: JSON) -> None:
        """Arm a timer for the end of the timeline when its final status has an
        event. Created lazily on the running loop, so it works whether or not
        the app's lifespan ran; without a running loop no event is sent."""
        tl = _timeline(rec["outcome"], rec["duration"])
        if len(tl) < 2 or tl[-1][1] not in WEBHOOK_EVENTS:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._arm(loop, rec["id"], rec["start"] + tl[-1][0], WEBHOOK_EVENTS[tl[-1][1]])

    def _arm(self, loop: asyncio.AbstractEventLoop, iid: str, due: float, etype: str) -> None:
        delay = max(0.0, due - time.monotonic())  # loop.time() is time.monotonic()
        self._timers[iid] = loop.call_later(delay, self._on_timer, loop, iid, due, etype)

    def _on_timer(self, loop: asyncio.AbstractEventLoop, iid: str, due: float, etype: str) -> None:
        self._timers.pop(iid, None)
        rec = self.interactions.get(iid)
        if rec is None or rec["cancelled_at"] is not None:
            return
        if time.monotonic() < due:  # fired a hair early: a GET would not see the status yet
            self._arm(loop, iid, due, etype)
            return
        self._emit(rec, etype)

    def _disarm(self, iid: str) -> None:
        handle = self._timers.pop(iid, None)
        if handle is not None:
            handle.cancel()

    def _emit(self, rec: JSON, etype: str) -> None:
        """Start one delivery task per URI for this event (at most once per
        interaction and event type)."""
        if etype in rec["events"]:
            return
        rec["events"].add(etype)
        wc = rec["echo"].get("webhook_config") or {}
        uris = list(dict.fromkeys(wc.get("uris") or self.config.webhook_urls))
        if not uris:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        _, changed, _ = self._phase(rec, time.monotonic())
        data: JSON = {"id": rec["id"]}
        if etype == "interaction.failed":
            # Documented fields; their value types are not. 13 = google.rpc INTERNAL,
            # as in the failed interaction's model_output.error.
            data |= {"error_code": 13, "error_message": "Simulated failure"}
        envelope: JSON = {"type": etype, "version": "v1"}
        envelope |= {"timestamp": _iso(rec["wall"] + changed), "data": data}
        if "user_metadata" in wc:
            # Where the real API puts user_metadata is UNCONFIRMED (reference section 9,
            # "inside or next to data"); the simulator puts it next to data so that
            # data keeps exactly the documented fields.
            envelope["user_metadata"] = wc["user_metadata"]
        body = json.dumps(envelope, separators=(",", ":")).encode()
        event_id = "evt_" + secrets.token_urlsafe(16)
        for uri in uris:
            task = loop.create_task(self._deliver(uri, event_id, etype, rec["id"], body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, uri: str, event_id: str, etype: str, iid: str, body: bytes) -> None:
        delays = list(self.config.webhook_retry_s)
        if self._client is None:  # one client, made on the loop that delivers
            self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, trust_env=False)
        error: str | None = None
        for attempt in range(1, len(delays) + 2):
            if attempt > 1:
                await asyncio.sleep(delays[attempt - 2])
            status: int | None = None
            error = None
            try:
                resp = await self._client.post(
                    uri, content=body, headers=self._headers(event_id, body)
                )
                status = resp.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except Exception as exc:  # connection errors, bad URLs, a bad secret
                error = f"{type(exc).__name__}: {exc}"
            self.webhook_log.append(
                {"t": time.time(), "event_id": event_id, "type": etype}
                | {"interaction_id": iid, "uri": uri, "attempt": attempt}
                | {"status": status, "error": error}
            )
            if error is None:
                return
        _log.warning("giving up on webhook %s (%s) to %s: %s", event_id, etype, uri, error)

    def _headers(self, event_id: str, body: bytes) -> dict[str, str]:
        secret = self.config.webhook_secret
        if secret is None:
            headers = {"webhook-id": event_id, "webhook-timestamp": str(int(time.time()))}
            headers["content-type"] = "application/json"
        else:
            headers = headers_for(secret, event_id, body)  # fresh timestamp per attempt
        headers["user-agent"] = "interq-simulator"
        return headers

    def pending(self) -> int:
        """Armed timers plus deliveries in flight."""
        return len(self._timers) + len(self._tasks)

    def _cancel_pending(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            try:
                task.cancel()
            except RuntimeError:  # its loop is closed already
                self._tasks.discard(task)

    async def aclose(self) -> None:
        """Cancel armed timers and deliveries in flight and wait for the latter."""
        tasks = list(self._tasks)
        self._cancel_pending()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


async def _serve(request: Request, op: str) -> Response:
    sim: Simulator = request.app.state.sim
    cfg = sim.config
    iid: str | None = request.path_params.get("iid")
    raw = await request.body()
    body: Any = None
    if op == "create":
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
    labels = (
        body.get("labels")
        if isinstance(body, dict)
        else (sim.interactions.get(iid or "") or {}).get("echo", {}).get("labels")
    )
    job = labels.get("interq_job") if isinstance(labels, dict) else None
    entry: JSON = {"t": time.time(), "op": op, "id": iid, "status": None, "fault": None}
    entry |= {"retry_delay_s": None, "job": job}
    sim.requests.append(entry)

    def reply(data: Any, status: int = 200) -> Response:
        entry["status"] = status
        return _json(data, status)

    def fail(err: ApiError) -> Response:
        return reply(error_body(err.code, err.message, err.status), err.code)

    if request.path_params["ver"] not in ("v1", "v1beta"):
        return reply(error_body(404, "Method not found."), 404)
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if cfg.api_key is not None and key != cfg.api_key:
        return reply(
            error_body(403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED"), 403
        )
    fault = sim.roll_fault(op)
    entry["fault"] = fault
    if fault == "429":
        entry["retry_delay_s"] = cfg.retry_delay_s
        details = [retry_info(cfg.retry_delay_s)]
        msg = "Resource has been exhausted (e.g. check quota)."
        return reply(error_body(429, msg, details=details), 429)
    if fault == "5xx":
        code = 500 if sim.rng.random() < 0.5 else 503
        msg = "Internal error encountered." if code == 500 else "The model is overloaded."
        return reply(error_body(code, msg), code)
    late = op == "create" and cfg.faults_after_create
    if fault == "drop" and not late:
        return _DropResponse()
    if fault == "timeout" and not late:
        await asyncio.sleep(cfg.slow_s)
        if op == "create" and await request.is_disconnected():
            entry["status"] = 499  # client gave up before anything was created
            return Response(status_code=499)
    if op == "create":
        delay = sim.quota_delay(time.monotonic())
        if delay is not None:
            entry.update(fault="quota", retry_delay_s=delay)
            msg = "You exceeded your current quota, please check your plan and billing details."
            return reply(error_body(429, msg, details=[_QUOTA_FAILURE, retry_info(delay)]), 429)
    try:
        if op == "create":
            if not isinstance(body, dict):
                raise ApiError(400, "Invalid JSON payload received.")
            data, entry["id"] = sim.create(body)
        else:
            assert iid is not None
            data = {"get": sim.get, "cancel": sim.cancel, "delete": sim.delete}[op](iid)
    except ApiError as err:
        return fail(err)
    if fault == "drop":
        return _DropResponse()
    if fault == "timeout":
        await asyncio.sleep(cfg.slow_s)
    return reply(data)


async def _sim_admin(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    what = request.path_params["what"]
    if what == "requests" and request.method == "GET":
        return _json(sim.requests)
    if what == "webhooks" and request.method == "GET":
        return _json(sim.webhook_log)
    if what == "stats" and request.method == "GET":
        return _json(sim.stats())
    if what == "reset" and request.method == "POST":
        sim.reset()
        return _json({})
    if what != "config":
        return _json(error_body(404, "Not found."), 404)
    if request.method == "POST":
        try:
            sim.update_config(await request.json())
        except ApiError as err:
            return _json(error_body(err.code, err.message), err.code)
    return _json(asdict(sim.config) | {"fault_ops": sorted(sim.config.fault_ops)})


def create_app(config: SimConfig | None = None) -> Starlette:
    """Build the simulator app; its state is ``app.state.sim`` (a :class:`Simulator`)."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET_DROPS)
    routes = [
        Route("/_sim/{what}", _sim_admin, methods=["GET", "POST"]),
        Route("/{ver}/interactions", partial(_serve, op="create"), methods=["POST"]),
        Route("/{ver}/interactions/{iid}", partial(_serve, op="get"), methods=["GET"]),
        Route("/{ver}/interactions/{iid}", partial(_serve, op="delete"), methods=["DELETE"]),
        Route("/{ver}/interactions/{iid}/cancel", partial(_serve, op="cancel"), methods=["POST"]),
    ]
    sim = Simulator(config or SimConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sim.aclose()  # no timer or delivery outlives the server

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim = sim
    return app


def config_from_env() -> SimConfig:
    """SimConfig from ``INTERQ_SIM_*`` environment variables (all optional)."""
    env, cfg = os.environ, SimConfig()
    for var, name, conv in (
        ("INTERQ_SIM_DURATION_S", "duration_s", float),
        ("INTERQ_SIM_SEED", "seed", int),
        ("INTERQ_SIM_FAULT_429", "fault_429", float),
        ("INTERQ_SIM_FAULT_5XX", "fault_5xx", float),
        ("INTERQ_SIM_FAULT_TIMEOUT", "fault_timeout", float),
        ("INTERQ_SIM_QUOTA_RPM", "quota_rpm", int),
    ):
        if env.get(var):
            setattr(cfg, name, conv(env[var]))
    urls = env.get("INTERQ_SIM_WEBHOOK_URLS", "")
    cfg.webhook_urls = [u.strip() for u in urls.split(",") if u.strip()]
    cfg.webhook_secret = env.get("INTERQ_SIM_WEBHOOK_SECRET") or None
    return cfg


def serve(host: str = "127.0.0.1", port: int = 8090, config: SimConfig | None = None) -> None:
    """Run the simulator with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    serve(port=int(os.environ.get("INTERQ_SIM_PORT", "8090")), config=config_from_env())
