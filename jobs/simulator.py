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

Not simulated: SSE streaming (``stream=true`` gets a 400), webhooks, agents'
environments beyond echoing, per-day quotas, ``include_input``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import re
import time
from collections import Counter, deque
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
    webhook_urls: list[str] = field(default_factory=list)  # reserved, unused


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
        self._ids = random.Random(f"ids-{config.seed}")  # survives reset: ids never repeat
        self._calls = 0
        self.reset()

    def reset(self) -> None:
        self.interactions.clear()
        self.requests.clear()
        self.created.clear()
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
        for k, v in data.items():
            setattr(self.config, k, set(v) if k == "fault_ops" else v)
        if "seed" in data:
            self.rng = random.Random(self.config.seed)

    def _new_id(self, prefix: str, nbytes: int = 18) -> str:
        return prefix + base64.urlsafe_b64encode(self._ids.randbytes(nbytes)).decode().rstrip("=")

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
        }
        rec["result_steps"] = self._result_steps(rec, body, text, output)
        out_len = sum(len(t) for t in extract_texts(rec["result_steps"]))
        n_in, n_out = len(" ".join(texts)) // 4 + 1, out_len // 4 + 1
        usage = {"total_tokens": n_in + n_out, "total_input_tokens": n_in}
        rec["usage"] = usage | {"total_output_tokens": n_out}
        if store:
            self.interactions[iid] = rec
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
        return self.render(rec)

    def delete(self, iid: str) -> JSON:
        self._get(iid)
        del self.interactions[iid]
        return {}


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
    app = Starlette(routes=routes)
    app.state.sim = Simulator(config or SimConfig())
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
    return cfg


def serve(host: str = "127.0.0.1", port: int = 8090, config: SimConfig | None = None) -> None:
    """Run the simulator with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    serve(port=int(os.environ.get("INTERQ_SIM_PORT", "8090")), config=config_from_env())
