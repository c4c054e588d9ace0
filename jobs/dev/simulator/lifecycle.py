"""The interaction state machine: :class:`Simulator` holds one simulated
endpoint's interactions and runs create (fresh, continued with a
``continuation_token``, or answering a ``function_call``), get (the status its
timeline has reached), cancel and delete, plus the request log, the admin
operations and the fault and webhook parts it owns."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from jobs.dev.simulator.config import SimConfig, apply_update, check_update, check_webhook_config
from jobs.dev.simulator.faults import Faults
from jobs.dev.simulator.scenarios import (
    answer_text,
    echo_of,
    extract_texts,
    input_steps,
    parse_directive,
    phase,
    plan,
    result_steps,
    usage_of,
)
from jobs.dev.simulator.webhooks import Webhooks
from jobs.dev.simulator.wire import (
    ERR_URI,
    JSON,
    PENDING,
    SLOW_CANCEL_POLLS,
    TERMINAL,
    ApiError,
    iso,
    new_id,
)
from jobs.domain import checks


def unknown_fields(body: JSON) -> list[str]:
    """Top-level fields of a create body that the SDK's create types do not
    have (the API refuses them with 400 "Unknown name")."""
    model, agent = checks.request_models()
    cls = agent if "agent" in body else model
    known = {f.alias or name for name, f in cls.model_fields.items()}
    return sorted(set(body) - known)


def check_create(body: JSON) -> tuple[bool, bool]:
    """The checks a create body must pass on its own: (background, store)."""
    if ("model" in body) == ("agent" in body):
        raise ApiError(400, "Exactly one of 'model' or 'agent' must be set.")
    unknown = unknown_fields(body)
    if unknown:  # the real API's answer to a misspelt field
        raise ApiError(
            400, f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
        )
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
        check_webhook_config(body["webhook_config"])
    if body.get("input") is None and body.get("continuation_token") is None:
        raise ApiError(400, "'input' is required.")
    return background, store


class Simulator:
    """In-memory state of one simulated API endpoint (``app.state.sim``)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        # the clock interactions age by (a test may put a controllable one here)
        self.clock: Callable[[], float] = time.monotonic
        self.interactions: dict[str, JSON] = {}
        self.requests: list[JSON] = []
        self.created: list[dict[str, str]] = []  # labels of every real creation
        self.fail_counts: dict[str, int] = {}  # creates per input text (fail_first=)
        self._calls = itertools.count(1)  # function_call ids, never reset
        self.faults = Faults(config)
        self.webhooks = Webhooks(config, self.interactions)
        self.reset()

    # --- admin ------------------------------------------------------------
    def reset(self) -> None:
        self.webhooks.cancel_pending()
        self.interactions.clear()
        self.requests.clear()
        self.created.clear()
        self.fail_counts.clear()
        self.webhooks.log.clear()
        self.faults.reset()

    @property
    def webhook_log(self) -> list[JSON]:
        """One entry per webhook delivery attempt (``GET /_sim/webhooks``)."""
        return self.webhooks.log

    @property
    def rng(self) -> random.Random:
        return self.faults.rng

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
        apply_update(self.config, check_update(data))
        if "seed" in data:
            self.faults.rng = random.Random(self.config.seed)

    def roll_fault(self, op: str) -> str | None:
        return self.faults.roll(op)

    def quota_delay(self, now: float) -> float | None:
        return self.faults.quota_delay(now)

    def pending(self) -> int:
        """Armed webhook timers plus deliveries in flight."""
        return self.webhooks.pending()

    async def aclose(self) -> None:
        """Cancel armed timers and deliveries in flight and wait for the latter."""
        await self.webhooks.aclose()

    # --- state machine ----------------------------------------------------
    def status(self, rec: JSON) -> str:
        return phase(rec, self.clock())[0]

    def render(self, rec: JSON, *, full: bool = True) -> JSON:
        status, changed, settled = phase(rec, self.clock())
        out: JSON = {"id": rec["id"], "object": "interaction", "status": status}
        out.update(rec["echo"])
        out["created"], out["updated"] = iso(rec["wall"]), iso(rec["wall"] + changed)
        steps = list(rec["input_steps"]) if full else []
        if settled:
            steps += rec["result_steps"]
        if settled or status == "cancelled":
            out["usage"] = rec["usage"]
        out["steps"] = steps
        if status == "failed":
            out["errors"] = rec["errors"] or [{"code": ERR_URI, "message": "Simulated failure"}]
        if status == "requires_continuation":
            out["continuation_token"] = rec["continuation_token"]
        return out

    def _get(self, iid: str) -> JSON:
        rec = self.interactions.get(iid)
        if rec is None:
            raise ApiError(404, f"Interaction {iid} not found.")
        return rec

    def _previous(self, body: JSON, in_steps: list[JSON]) -> JSON | None:
        """The interaction a create follows, checked against the body's
        ``continuation_token`` and ``function_result`` steps."""
        token, prev_id = body.get("continuation_token"), body.get("previous_interaction_id")
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
        results = [s for s in in_steps if s.get("type") == "function_result"]
        if results and prev is not None and self.status(prev) == "requires_action":
            if any(s.get("call_id") not in prev["pending_calls"] for s in results):
                raise ApiError(
                    400, "function_result.call_id does not match a pending function_call."
                )
        return prev

    # --- operations -------------------------------------------------------
    def create(self, body: JSON) -> tuple[JSON, str]:
        background, store = check_create(body)
        texts = extract_texts(body.get("input"))
        try:
            spec = parse_directive(" ".join(texts))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        in_steps = input_steps(body.get("input"))
        prev = self._previous(body, in_steps)
        results = [s for s in in_steps if s.get("type") == "function_result"]
        try:
            shape, outcome, rnd = plan(spec, prev, results)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        if spec.get("fail_first"):
            key = " ".join(texts)
            seen = self.fail_counts[key] = self.fail_counts.get(key, 0) + 1
            outcome = "failed" if seen <= spec["fail_first"] else outcome
        output = spec.get("output", "text")
        continued = body.get("continuation_token") is not None
        text = answer_text(texts, output, results, prev, continued)
        duration = spec.get("duration", self.config.duration_s) if background else 0.0
        rec = self._record(body, outcome, duration, in_steps)
        rec["shape"], rec["round"] = shape, rnd
        rec["result_steps"] = result_steps(rec, body, text, output, self._calls)
        rec["usage"] = usage_of(texts, rec["result_steps"])
        if store:
            self.interactions[rec["id"]] = rec
            if background:
                self.webhooks.arm_end_timer(rec)
        self.created.append(dict(body.get("labels") or {}))
        return self._created(rec), rec["id"]

    def _record(self, body: JSON, outcome: str, duration: float, in_steps: list[JSON]) -> JSON:
        return {
            "id": new_id("v1_"),
            "start": self.clock(),
            "wall": time.time(),
            "duration": duration,
            "outcome": outcome,
            "cancelled_at": None,
            "gets": 0,
            "input_steps": in_steps,
            "pending_calls": [],
            "continuation_token": None,
            "rest_text": "",
            "shape": None,
            "round": 1,
            "errors": None,  # errors[] of a failed shape (else the default)
            "cancelling_left": 0,  # polls after a cancel still "in_progress" (slow_cancel)
            "echo": echo_of(body),
            "background": bool(body.get("background", False)),
            "events": set(),  # webhook event types already emitted
        }

    def _created(self, rec: JSON) -> JSON:
        """A create's response: the interaction so far (synchronous) or its
        first, bare status (background)."""
        if not rec["background"]:
            return self.render(rec, full=False)
        keep = ("model", "agent", "labels", "previous_interaction_id", "service_tier")
        resp = {k: v for k, v in self.render(rec).items() if k in keep}
        resp.update(id=rec["id"], object="interaction", status=self.status(rec))
        resp["created"] = resp["updated"] = iso(rec["wall"])
        return resp

    def get(self, iid: str) -> JSON:
        rec = self._get(iid)
        rec["gets"] += 1
        if rec["outcome"] == "not_found_first" and rec["gets"] <= 2:
            raise ApiError(404, f"Interaction {iid} not found.")
        out = self.render(rec)
        if rec["cancelled_at"] is not None and rec.get("cancelling_left"):
            rec["cancelling_left"] -= 1
        return out

    def cancel(self, iid: str) -> JSON:
        rec = self._get(iid)
        if rec["outcome"] == "cancel404":
            raise ApiError(404, "Method not found.")
        if self.status(rec) in TERMINAL:
            raise ApiError(
                400, "Interaction is already in a terminal state.", "FAILED_PRECONDITION"
            )
        if rec["cancelled_at"] is None:
            rec["cancelled_at"] = self.clock()
            rec["cancelling_left"] = SLOW_CANCEL_POLLS if rec["shape"] == "slow_cancel" else 0
        self.webhooks.disarm(iid)
        if rec["background"]:
            self.webhooks.emit(rec, "interaction.cancelled")
        return self.render(rec)

    def delete(self, iid: str) -> JSON:
        self._get(iid)
        self.webhooks.disarm(iid)
        del self.interactions[iid]
        return {}
