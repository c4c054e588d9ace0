"""Per-tenant limits (``INTERQ_TENANT_LIMITS``) and each tenant's day.

The day is the upstream's: a Pacific day, turning at midnight in
America/Los_Angeles, as the Gemini API's per-day quotas do
(``jobs.upstream.client.daily_reset``).

- **Tokens per day.** Every hop's usage (an interaction that ended, paused or
  was continued) is added to the tenant's day (``{p}:t:<tenant>:day:<date>``:
  input + output + thought tokens, and the estimated cost) by one script
  (``tenant_tokens.lua``). When the day's tokens reach the tenant's
  ``tokens_per_day``, the same script holds the tenant until the day's turn
  (``{p}:t:<tenant>:tokens_hold``, expiring then): new ``POST /v1/jobs`` and
  ``POST /v1/batches`` get 429 ``tenant_daily_tokens`` with Retry-After
  (``jobs/http/tenant_guard.py``), the dispatcher sends none of its queued
  jobs and a submit already dispatched waits (held, never failed), and its
  running batches show ``"status": "paused"``. Interactions already running
  upstream run to their end (their tokens still count).
- **Lift.** ``interq tenant resume TENANT`` (``lift``) replaces the hold by a
  ``lifted`` mark that lasts until the same turn: the tenant's work goes on
  and is not held again that day.
- **In flight.** A tenant's jobs dispatched and not ended: those in arq
  still ``queued`` (``{p}:t:<tenant>:dispatched``, added by the dispatch
  script, pruned here) plus its ``running`` ones (its status index). A job
  waiting in ``requires_action`` is not in flight: it holds nothing upstream.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from jobs.domain import costs
from jobs.domain.records import Batch, Job
from jobs.observe import metrics
from jobs.services import Services
from jobs.storage.scripts import register
from jobs.upstream import answers as interactions
from jobs.upstream.client import daily_reset, pacific

log = logging.getLogger("interq.tenants")

DAY_KINDS = ("input", "output", "thought")  # the tokens a day counts (the priced ones)
KEEP_DAYS_S = 2 * 86_400.0  # a day's hash outlives its day: yesterday stays readable
LIFTED = "lifted"


def day_of(now: float) -> str:
    """The Pacific day of ``now`` (epoch s), ``YYYY-MM-DD``."""
    return dt.datetime.fromtimestamp(now, pacific()).date().isoformat()


def _lua(svc: Services) -> dict[str, Any]:
    found = svc.cache.get("tenants_lua")
    if found is None:
        found = svc.cache["tenants_lua"] = register(svc.redis, "tenant_tokens")
    assert isinstance(found, dict)
    return found


async def record_usage(svc: Services, job: Job, usage: Any, now: float | None = None) -> None:
    """Count one hop's usage: the token and cost metrics, and the tenant's
    day (which may hold the tenant: its tokens_per_day is reached)."""
    counts = interactions.token_counts(usage)
    if not counts:
        return
    model = metrics.model_label(job.model)
    for kind, n in counts.items():
        metrics.TOKENS.labels(model=model, kind=kind).inc(n)
    nano = costs.cost_nano(svc.settings, job.model, usage) or 0
    if nano:
        tenant = metrics.tenant_label(job.tenant, svc.settings.known_tenants)
        metrics.COST.labels(tenant=tenant, model=model).inc(nano / costs.NANO_PER_USD)
    now = time.time() if now is None else now
    end = daily_reset(now)
    limit = svc.settings.tenant_limit_for(job.tenant).tokens_per_day
    k = svc.store.keys
    tokens, held = await _lua(svc)["tenant_tokens"](
        keys=[k.tenant_day(job.tenant, day_of(now)), k.tenant_hold(job.tenant), k.tenant_holds],
        args=[
            sum(counts.get(kind, 0) for kind in DAY_KINDS),
            nano,
            limit or "",
            int(end * 1000),
            int((end + KEEP_DAYS_S) * 1000),
            job.tenant,
        ],
    )
    if held:
        metrics.TENANT_HOLDS.inc()
        log.warning(
            "tenant %s used %d tokens today (limit %s): new work held until %.0f",
            job.tenant,
            tokens,
            limit,
            end,
        )


async def held_until(svc: Services, tenant: str, now: float) -> float:
    """When the tenant's daily-tokens hold ends (epoch s); 0 when not held
    (or lifted for the day)."""
    raw = await svc.redis.get(svc.store.keys.tenant_hold(tenant))
    if not raw or raw in (LIFTED, LIFTED.encode()):
        return 0.0
    until = float(raw) / 1000
    return until if until > now else 0.0


async def lift(svc: Services, tenant: str) -> bool:
    """Lift the tenant's hold for the rest of the day (an operator). True if
    it was held."""
    key = svc.store.keys.tenant_hold(tenant)
    was = await held_until(svc, tenant, time.time())
    if was:
        await svc.redis.set(key, LIFTED, xx=True, keepttl=True)
    return bool(was)


async def holds(svc: Services, now: float) -> dict[str, float]:
    """Every tenant held now, with the hold's end (epoch s)."""
    members = await svc.redis.smembers(svc.store.keys.tenant_holds)  # type: ignore[misc]
    out: dict[str, float] = {}
    for t in sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members):
        until = await held_until(svc, t, now)
        if until:
            out[t] = until
        elif not await svc.redis.exists(svc.store.keys.tenant_hold(t)):
            await svc.redis.srem(svc.store.keys.tenant_holds, t)  # type: ignore[misc]
    return out


async def today(svc: Services, tenant: str, now: float) -> dict[str, Any]:
    """The tenant's day so far: tokens, estimated cost, limits, hold."""
    raw = await svc.redis.hgetall(svc.store.keys.tenant_day(tenant, day_of(now)))  # type: ignore[misc]
    got = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    lim = svc.settings.tenant_limit_for(tenant)
    until = await held_until(svc, tenant, now)
    return {
        "tenant": tenant,
        "day": day_of(now),
        "tokens": got.get("tokens", 0),
        "estimated_cost_usd": costs.usd(got.get("cost_nano_usd", 0)),
        "limits": lim.model_dump(),
        "in_flight": await in_flight(svc, tenant),
        "held_until": until or None,
        "day_turns_at": daily_reset(now),
    }


async def in_flight(svc: Services, tenant: str) -> int:
    """The tenant's jobs dispatched and not ended: in arq still queued, or
    running (``requires_action`` excluded). Prunes the dispatched set of the
    jobs that started, ended or are gone."""
    k = svc.store.keys
    dkey = k.tenant_dispatched(tenant)
    ids = [
        x.decode() if isinstance(x, bytes) else str(x) for x in await svc.redis.zrange(dkey, 0, -1)
    ]
    async with svc.redis.pipeline(transaction=True) as pipe:  # one snapshot: counted once
        for jid in ids:
            pipe.hget(k.job(jid), "status")
        pipe.zcard(k.tenant_status(tenant, "running"))
        *statuses, running = await pipe.execute()
    left = [jid for jid, st in zip(ids, statuses, strict=True) if st in (b"queued", "queued")]
    gone = set(ids) - set(left)
    if gone:
        await svc.redis.zrem(dkey, *gone)
    return int(running) + len(left)


async def batch_view_fields(svc: Services, batch: Batch) -> dict[str, Any]:
    """What the batch view adds: its estimated cost (with prices), and
    ``paused`` while its tenant is held for its daily tokens."""
    out: dict[str, Any] = {}
    cost = await costs.batch_cost(svc, batch)
    if cost is not None:
        out["estimated_cost_usd"] = cost
    if batch.status != "in_progress" or batch.extra.get("paused"):
        return out  # ended, or paused for its own reason (jobs/domain/batch_pause.py)
    if not svc.settings.tenant_limit_for(batch.tenant).tokens_per_day:
        return out
    until = await held_until(svc, batch.tenant, time.time())
    if until:
        out["status"] = "paused"
        out["pause_error"] = over_limit_error(batch.tenant, until)
    return out


def over_limit_error(tenant: str, until: float) -> dict[str, Any]:
    return {
        "code": "tenant_daily_tokens",
        "message": f"tenant {tenant!r} used its tokens for today; work resumes when the "
        "day turns (midnight Pacific) or an operator lifts the hold",
        "retry_at": until,
    }
