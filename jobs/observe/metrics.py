"""Every Prometheus metric interq exports, in one place.

Names follow Prometheus conventions: prefix ``interq_``, base units, counters
ending in ``_total``. Label values are bounded: ``model`` is one of the
configured/known models or ``other``; ``tenant`` is a tenant named in settings
(``INTERQ_API_KEYS``, ``INTERQ_TENANT_LIMITS``; ``default`` without keys) or
``other``; ``status`` and ``op`` are closed sets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.domain.statuses import TERMINAL, JobStatus
from jobs.storage.keys import Keys

# Durations from 100 ms to 6 h: flash models end in seconds, research agents in an hour.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

KNOWN_MODELS = frozenset(
    {
        "gemini-3.5-flash",
        "gemini-3.5-pro",
        "gemini-3-flash",
        "gemini-3-pro",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "deep-research-pro-preview-12-2025",
        "deep-research-preview-04-2026",
        "deep-research-max-preview-04-2026",
        "antigravity-preview-05-2026",
        "antigravity-preview-09-2026",
        "sim-model",
    }
)


def model_label(name: str | None) -> str:
    return name if name in KNOWN_MODELS else "other"


def tenant_label(name: str | None, known: frozenset[str]) -> str:
    """A tenant as a label value: one named in settings, else ``other``."""
    return name if name in known else "other"


JOBS_ACCEPTED = Counter("interq_jobs_accepted_total", "Jobs accepted by the API", ["model"])
JOBS_RERUN = Counter("interq_jobs_rerun_total", "Ended jobs queued again by a rerun", ["model"])
BATCHES_PAUSED = Counter(
    "interq_batches_paused_total",
    "Batches paused because their first jobs were all refused upstream with the same 400",
)
JOBS_FINISHED = Counter(
    "interq_jobs_finished_total", "Jobs that reached a terminal status", ["status", "model"]
)
JOB_DURATION = Histogram(
    "interq_job_duration_seconds",
    "From acceptance to terminal status",
    ["status"],
    buckets=DURATION_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "interq_job_queue_wait_seconds",
    "From acceptance to the upstream create",
    buckets=DURATION_BUCKETS,
)
UPSTREAM_REQUESTS = Counter(
    "interq_upstream_requests_total", "Requests to the Interactions API", ["op", "code"]
)
UPSTREAM_LATENCY = Histogram(
    "interq_upstream_request_duration_seconds",
    "Latency of Interactions API requests",
    ["op"],
    buckets=LATENCY_BUCKETS,
)
POLLS = Counter("interq_polls_total", "GET polls of running interactions", ["model"])
POSSIBLE_DUPLICATES = Counter(
    "interq_possible_duplicate_submissions_total",
    "Creates re-sent after an earlier create's response may have been lost",
)
UNKNOWN_UPSTREAM_STATUS = Counter(
    "interq_unknown_upstream_status_total", "Upstream statuses this version does not know"
)
WEBHOOK_DELIVERIES = Counter(
    "interq_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"]
)
WEBHOOK_LATENCY = Histogram(
    "interq_webhook_delivery_duration_seconds",
    "Latency of webhook delivery attempts",
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_DEAD_LETTERS = Counter(
    "interq_webhook_dead_letters_total", "Webhook events that exhausted their retry schedule"
)
TOKENS = Counter("interq_tokens_total", "Tokens used, from upstream usage", ["model", "kind"])
COST = Counter(
    "interq_cost_usd_total",
    "Estimated cost of the tokens used, from INTERQ_PRICES (USD)",
    ["tenant", "model"],
)
TENANT_HOLDS = Counter(
    "interq_tenant_holds_total",
    "Times a tenant reached its tokens_per_day and its new work was held until the day's turn",
)
STEP_ERRORS = Counter("interq_step_errors_total", "Unexpected errors inside worker steps", ["step"])
WORKER_UP = Gauge("interq_worker_up", "1 while this worker process runs")
POLL_LAG = Histogram(
    "interq_poll_lag_seconds",
    "How late a due poll was claimed by the poll engine",
    buckets=LATENCY_BUCKETS,
)
ENGINE_LAG = Gauge(
    "interq_engine_lag_seconds",
    "Average lag of this worker's engine (polls, deliveries) over recent claims",
    ["engine"],
)
ENGINE_OVERLOADED = Gauge(
    "interq_engine_overloaded",
    "1 while work falls due faster than this worker's engine starts it",
    ["engine"],
)
ENGINE_ACTIVE = Gauge(
    "interq_engine_active", "Polls or delivery attempts in progress in this worker", ["engine"]
)
LABEL_MISMATCHES = Counter(
    "interq_label_mismatches_total",
    "Interactions whose labels.interq_job named another job: never attached, re-created",
)
WEBHOOK_DEFERRED = Counter(
    "interq_webhook_deferred_total",
    "Delivery attempts put back because their destination was at its concurrency bound",
)

# Background loops (jobs/loops.py): each pass that ends well, each error by kind.
LOOP_NAMES = ("dispatcher", "poller", "delivery", "sweeper", "worker", "watch")
LOOP_ERROR_KINDS = ("connection", "timeout", "readonly", "oom", "loading", "other")
LOOP_ITERATIONS = Counter(
    "interq_loop_iterations_total", "Passes of a background loop that ended without error", ["loop"]
)
LOOP_ERRORS = Counter(
    "interq_loop_errors_total", "Errors a background loop survived, by kind", ["loop", "kind"]
)
LOOP_LAST_SUCCESS = Gauge(
    "interq_loop_last_success_timestamp_seconds",
    "Unix time of a background loop's last pass without error (0: none yet)",
    ["loop"],
)
PURGED = Counter("interq_purged_total", "Jobs and batches deleted (retention or DELETE)", ["kind"])

# Queue-level gauges: computed from Redis at scrape time by the API process only
# (see ``refresh_queue_gauges``), in their own registry so that workers, which
# export the default registry, do not export them as zeros.
QUEUE_REGISTRY = CollectorRegistry()
QUEUE_DEPTH = Gauge(
    "interq_queue_depth", "Jobs accepted and waiting for dispatch", registry=QUEUE_REGISTRY
)
IN_FLIGHT = Gauge(
    "interq_jobs_in_flight",
    "Jobs dispatched and not yet ended",
    ["model"],
    registry=QUEUE_REGISTRY,
)
OLDEST_IN_FLIGHT = Gauge(
    "interq_oldest_inflight_seconds",
    "Age of the oldest dispatched job not yet ended",
    registry=QUEUE_REGISTRY,
)
REDIS_UP = Gauge(
    "interq_redis_up", "1 if the API reached Redis at the last scrape", registry=QUEUE_REGISTRY
)
JOBS_BY_STATUS = Gauge(
    "interq_jobs_by_status", "Jobs stored, by status", ["status"], registry=QUEUE_REGISTRY
)

QUOTA_HELD = Gauge(
    "interq_quota_held",
    "1 while a model's dispatch is held for a per-day quota (until the daily reset)",
    ["model"],
    registry=QUEUE_REGISTRY,
)
UPSTREAM_KEY_HEALTHY = Gauge(
    "interq_upstream_key_healthy",
    "0 while the upstream refuses the API key (a 401/403 in the last minute, no success since)",
    registry=QUEUE_REGISTRY,
)


JOB_STATUSES = tuple(s.value for s in JobStatus)
TERMINAL_STATUSES = tuple(s.value for s in JobStatus if s in TERMINAL)


def _init_series() -> None:
    """Create the label sets dashboards and alerts rate() over, at 0, so the
    first increments after a start are seen by rate() and increase()."""
    for model in (*sorted(KNOWN_MODELS), "other"):
        JOBS_ACCEPTED.labels(model=model)
        JOBS_RERUN.labels(model=model)
        for status in TERMINAL_STATUSES:
            JOBS_FINISHED.labels(status=status, model=model)
        IN_FLIGHT.labels(model=model)
        QUOTA_HELD.labels(model=model)
    for op in ("create", "get", "cancel"):
        for code in ("200", "429", "500", "503", "timeout", "connect_error"):
            UPSTREAM_REQUESTS.labels(op=op, code=code)
    for outcome in ("delivered", "failed", "gone"):
        WEBHOOK_DELIVERIES.labels(outcome=outcome)
    for status in JOB_STATUSES:
        JOBS_BY_STATUS.labels(status=status)
    for step in ("submit", "poll", "deliver", "batch_done"):
        STEP_ERRORS.labels(step=step)
    for engine in ("poller", "delivery"):
        ENGINE_LAG.labels(engine=engine)
        ENGINE_OVERLOADED.labels(engine=engine)
        ENGINE_ACTIVE.labels(engine=engine)
    for loop in LOOP_NAMES:
        LOOP_ITERATIONS.labels(loop=loop)
        LOOP_LAST_SUCCESS.labels(loop=loop)
        for kind in LOOP_ERROR_KINDS:
            LOOP_ERRORS.labels(loop=loop, kind=kind)
    for kind in ("job", "batch"):
        PURGED.labels(kind=kind)


_init_series()


def redis_error_kind(exc: BaseException) -> str:
    """One of ``LOOP_ERROR_KINDS`` for an error met talking to Redis.

    redis-py maps the reply codes to classes (``-READONLY`` to ReadOnlyError,
    ``-OOM`` to OutOfMemoryError, ``-LOADING`` to BusyLoadingError, which is a
    ConnectionError); a code it leaves as a plain ResponseError (inside a
    script's error, say) is recognised by the message."""
    if isinstance(exc, BusyLoadingError):
        return "loading"
    if isinstance(exc, ReadOnlyError):
        return "readonly"
    if isinstance(exc, OutOfMemoryError):
        return "oom"
    if isinstance(exc, ResponseError):
        code = str(exc).split(" ", 1)[0]
        return {"READONLY": "readonly", "OOM": "oom", "LOADING": "loading"}.get(code, "other")
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    return "other"


@dataclass
class QueueSnapshot:
    """Queue-wide numbers read from Redis in one pipelined round trip."""

    lane_depths: dict[str, int]  # lane ("tenant|batch") -> jobs waiting
    in_flight: dict[str, int]  # model label -> jobs dispatched, not ended
    oldest_in_flight_s: float | None
    by_status: dict[str, int]


async def queue_snapshot(redis: Redis, keys: Keys) -> QueueSnapshot:
    lanes = [_s(x) for x in await redis.smembers(keys.lanes)]  # type: ignore[misc]
    # models with jobs in flight: a set kept by the dispatch and transition
    # scripts, so no keyspace scan (a scrape costs the same at any job count)
    models = [_s(x) for x in await redis.smembers(keys.models)]  # type: ignore[misc]
    inflight_keys = [keys.inflight(m) for m in models]
    async with redis.pipeline(transaction=False) as pipe:
        for lane in lanes:
            pipe.llen(keys.ready(lane))
        for key in inflight_keys:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
        pipe.hgetall(keys.counts)
        res = await pipe.execute()
    rest = res[len(lanes) :]
    in_flight: dict[str, int] = {}
    oldest_ms: float | None = None
    for i, model in enumerate(models):
        count, first = int(rest[2 * i]), rest[2 * i + 1]
        label = model_label(model)
        in_flight[label] = in_flight.get(label, 0) + count
        if first:
            score = float(first[0][1])
            oldest_ms = score if oldest_ms is None else min(oldest_ms, score)
    by_status = dict.fromkeys(JOB_STATUSES, 0)
    by_status.update({_s(k): int(v) for k, v in (rest[-1] or {}).items()})
    return QueueSnapshot(
        lane_depths={lane: int(n) for lane, n in zip(lanes, res[: len(lanes)], strict=True)},
        in_flight=in_flight,
        oldest_in_flight_s=None if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000),
        by_status=by_status,
    )


async def refresh_queue_gauges(redis: Redis, keys: Keys) -> None:
    """Set the queue-level gauges from Redis (one pipelined round trip)."""
    try:
        snap = await queue_snapshot(redis, keys)
    except (RedisError, OSError):
        REDIS_UP.set(0)
        return
    REDIS_UP.set(1)
    QUEUE_DEPTH.set(sum(snap.lane_depths.values()))
    for model in (*KNOWN_MODELS, "other"):
        IN_FLIGHT.labels(model=model).set(snap.in_flight.get(model, 0))
    OLDEST_IN_FLIGHT.set(snap.oldest_in_flight_s or 0)
    for status, n in snap.by_status.items():
        JOBS_BY_STATUS.labels(status=status).set(n)
    try:
        await refresh_pause_gauges(redis, keys)
    except (RedisError, OSError):
        REDIS_UP.set(0)


async def refresh_pause_gauges(redis: Redis, keys: Keys) -> None:
    """``interq_quota_held`` per model and ``interq_upstream_key_healthy``."""
    held = [_s(x) for x in await redis.smembers(keys.quota_holds)]  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for m in held:
            pipe.exists(keys.quota_hold(m))
        pipe.exists(keys.key_refused)
        res = await pipe.execute()
    on = {model_label(m) for m, n in zip(held, res[:-1], strict=True) if n}
    for model in (*KNOWN_MODELS, "other"):
        QUOTA_HELD.labels(model=model).set(int(model in on))
    UPSTREAM_KEY_HEALTHY.set(0 if res[-1] else 1)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
