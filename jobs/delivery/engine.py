"""The delivery engine: webhook attempts, from one loop per worker, with their
own concurrency (the machinery is ``engine.DueEngine``).

Events wait in the delivery index ``{p}:deliveries`` (event id -> due ms): the
transition that creates a deliverable event (the outbox) puts it there, due at
once; a redeliver puts it back. The engine claims due events under a lease and
sends each as a signed POST (``sender.post``), at most
``INTERQ_WEBHOOK_CONCURRENCY`` at once per worker and at most
``INTERQ_WEBHOOK_PER_DESTINATION`` to one destination (scheme, host, port): an
event whose destination is at its bound goes back to the index for about one
attempt's duration, with no attempt counted. So a slow or dead receiver delays
only its own events, never the work (submits and polls) or other tenants'
webhooks. The attempt's outcome is written back through
``lua/reschedule_delivery.lua``: next due time on the schedule, or out of the
index when delivered, gone (410) or dead-lettered.
"""

from __future__ import annotations

import logging
import random
from typing import Any
from urllib.parse import urlsplit

from jobs.delivery import endpoints, sender, signing
from jobs.domain.records import Event, EventState, EventUpdate, event_fields
from jobs.observe import logs, metrics, tracing
from jobs.services import Services
from jobs.storage.scripts import lua
from jobs.work.clock import SYSTEM, Clock
from jobs.work.engine import DueEngine, Write
from jobs.work.steps import STEP_GUARD_MAX_TRIES, fault_delay

log = logging.getLogger("interq.delivery")

DEFER_MIN_S = 0.5  # an event whose destination is busy comes back at least this late
DURATION_SMOOTHING = 0.3


class DeliveryEngine(DueEngine):
    def __init__(self, svc: Services, clock: Clock = SYSTEM) -> None:
        cfg = svc.settings
        super().__init__(
            redis=svc.redis,
            index=svc.store.keys.deliveries,
            capacity=cfg.webhook_concurrency,
            batch=cfg.webhook_concurrency,
            lease_s=cfg.webhook_timeout_s + 10.0,
            idle_s=cfg.worker_poll_delay_s,
            task_timeout_s=cfg.webhook_timeout_s + 5.0,
            name="delivery",
            clock=clock,
        )
        self.svc = svc
        self._write = svc.redis.register_script(lua("reschedule_delivery"))
        self.busy: dict[str, int] = {}  # destination -> attempts in progress here
        self.took: dict[str, float] = {}  # destination -> smoothed attempt duration

    def write_script(self) -> Any:
        return self._write

    def observe_lag(self, lags: list[float]) -> None:
        metrics.ENGINE_LAG.labels(engine="delivery").set(self.lag_avg)
        metrics.ENGINE_OVERLOADED.labels(engine="delivery").set(int(self.overloaded))
        metrics.ENGINE_ACTIVE.labels(engine="delivery").set(len(self.active))

    async def prefetch(self, members: list[str]) -> list[Any]:
        return await self.svc.store.get_events(members) if members else []

    async def handle(self, member: str, lag_s: float, record: Any) -> Write | None:
        ev: Event | None = record
        if ev is None or ev.state != EventState.pending:
            return self._settle(member, ev, {})
        logs.clear()
        logs.bind(event_id=member)
        try:
            return await self._attempt(member, ev)
        except Exception as e:
            return self._fault(member, ev, e)

    async def _attempt(self, event_id: str, ev: Event) -> Write:
        svc = self.svc
        owner = await svc.store.get_owner(ev.owner_ref)
        target = await endpoints.target_for(svc, owner) if owner else None
        if target is None:
            return self._settle(event_id, ev, {"state": EventState.no_endpoint})
        dest = destination(target.url)
        if self.busy.get(dest, 0) >= svc.settings.webhook_per_destination:
            metrics.WEBHOOK_DEFERRED.inc()
            wait = max(DEFER_MIN_S, self.took.get(dest, DEFER_MIN_S)) * random.uniform(1.0, 1.5)
            return self._again(event_id, wait, {})
        self.busy[dest] = self.busy.get(dest, 0) + 1
        try:
            with tracing.webhook_span(ev, event_id) as sp:
                trace_headers: dict[str, str] = {}
                tracing.inject(trace_headers)
                res = await sender.post(
                    svc.http, target.url, target.secrets, event_id, ev.body.encode(),
                    svc.webhook_policy, extra_headers=trace_headers,
                )  # fmt: skip
                sp.set_attribute("http.response.status_code", res.status_code or 0)
        finally:
            self.busy[dest] -= 1
            if not self.busy[dest]:
                del self.busy[dest]
        prev = self.took.get(dest, res.duration_s)
        self.took[dest] = prev + DURATION_SMOOTHING * (res.duration_s - prev)
        return await self._record(event_id, ev, target.url, res)

    async def _record(self, event_id: str, ev: Event, url: str, res: sender.AttemptResult) -> Write:
        svc, cfg = self.svc, self.svc.settings
        metrics.WEBHOOK_DELIVERIES.labels(outcome=res.outcome).inc()
        metrics.WEBHOOK_LATENCY.observe(res.duration_s)
        attempt = ev.attempts + 1
        in_round = ev.round_attempts + 1
        now = self.clock.time()
        entry = {
            "attempt": attempt,
            "at": now,
            "url": url,
            "outcome": res.outcome,
            "status_code": res.status_code,
            "error": res.error,
            "duration_s": round(res.duration_s, 4),
        }
        await svc.store.log_attempt(event_id, entry)
        fields: EventUpdate = {
            "attempts": attempt,
            "round_attempts": in_round,
            "last_attempt_at": now,
            "last_error": res.error or "",
            "faults": 0,
        }
        if res.outcome in ("delivered", "gone"):
            return self._settle(event_id, ev, {**fields, "state": EventState(res.outcome)})
        delay = signing.next_delay(cfg.webhook_schedule_s, in_round, cfg.webhook_jitter)
        if delay is None:
            metrics.WEBHOOK_DEAD_LETTERS.inc()
            log.warning("event %s dead-lettered after %d attempts", event_id, attempt)
            return self._settle(event_id, ev, {**fields, "state": EventState.dead}, dead=True)
        return self._again(event_id, delay, fields)

    def _fault(self, event_id: str, ev: Event, e: Exception) -> Write:
        metrics.STEP_ERRORS.labels(step="deliver").inc()
        faults = ev.faults + 1
        log.exception("delivery of %s failed unexpectedly (%d in a row)", event_id, faults)
        if faults < STEP_GUARD_MAX_TRIES:
            return self._again(event_id, fault_delay(self.svc, faults), {"faults": faults})
        metrics.WEBHOOK_DEAD_LETTERS.inc()
        error = f"{type(e).__name__}: {e}"[:500]
        return self._settle(event_id, ev, {"state": EventState.dead, "last_error": error}, True)

    def _again(self, event_id: str, delay_s: float, fields: EventUpdate) -> Write:
        due = str(int((self.clock.time() + delay_s) * 1000))
        return self._w(event_id, "", due, "", fields)

    def _settle(
        self, event_id: str, ev: Event | None, fields: EventUpdate, dead: bool = False
    ) -> Write:
        tenant = ev.tenant if ev is not None else ""
        return self._w(event_id, tenant, "", f"{self.clock.time():.3f}" if dead else "", fields)

    def _w(self, event_id: str, tenant: str, due: str, dead_at: str, fields: EventUpdate) -> Write:
        keys = self.svc.store.keys
        flat: list[str | int | float] = [event_id, due, dead_at]
        for k, v in event_fields(fields).items():
            flat += [k, v]
        return Write([keys.event(event_id), self.index, keys.deadletter(tenant)], flat)


def destination(url: str) -> str:
    """Scheme, host and port: what one receiver is, for the per-destination bound."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
