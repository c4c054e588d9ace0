"""arq worker: ``arq worker.WorkerSettings`` (or ``interq worker``).

Every step is short; waiting is a deferred arq job (``Retry(defer=...)``), so a
worker slot is never held while an interaction runs upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func
from prometheus_client import start_http_server
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs import batches, metrics, retention, steps
from jobs.dispatch import Dispatcher
from jobs.services import Services
from jobs.settings import Settings, get_settings

log = logging.getLogger("interq.worker")

# arq drops a job whose tries run out, which would strand its record: submit and
# poll re-run with Retry while they wait (budget, backoff, the interaction), and
# are bounded by the job's deadline and INTERQ_MAX_SUBMIT_ATTEMPTS instead.
UNBOUNDED_TRIES = 10_000_000


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings, made to ride out a Redis restart."""
    rs = RedisSettings.from_dsn(settings.effective_redis_url)
    if settings.redis_sentinels:
        rs.host = settings.sentinel_hosts
        rs.sentinel = True
        rs.sentinel_master = settings.redis_sentinel_master
    if rs.ssl and settings.redis_tls_ca_file:
        rs.ssl_ca_certs = settings.redis_tls_ca_file
    rs.conn_retries = 60
    rs.retry_on_timeout = True
    rs.retry_on_error = [RedisConnectionError]
    rs.retry = RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=10)
    return rs


def worker_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker`` built from settings."""
    t = settings.step_timeout_s
    deliver_tries = len(settings.webhook_schedule_s) + steps.STEP_GUARD_MAX_TRIES + 1
    sweeper = overrides.pop("_sweeper", True)  # tests that drive the clock turn it off

    async def on_startup(ctx: dict[str, Any]) -> None:
        svc = ctx["svc"] = Services.open(
            settings, upstream_transport=overrides.pop("_transport", None)
        )
        ctx["dispatcher"] = asyncio.create_task(Dispatcher(svc).run())
        if sweeper:  # TODO(merge): under loops.supervised("sweeper", ...)
            ctx["sweeper"] = asyncio.create_task(retention.run_sweeper(svc))
        metrics.WORKER_UP.set(1)
        if settings.worker_metrics_port:
            try:
                start_http_server(settings.worker_metrics_port)
            except OSError as e:
                log.warning(
                    "worker metrics port %d unavailable: %s", settings.worker_metrics_port, e
                )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        log.info("worker stopping: running steps drained, no new ones taken")
        metrics.WORKER_UP.set(0)
        for task in ("dispatcher", "sweeper"):
            if task in ctx:
                ctx[task].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ctx[task]
        if "svc" in ctx:
            await ctx["svc"].close()

    opts: dict[str, Any] = {
        "functions": [
            func(
                steps.submit,
                name="submit",
                timeout=t,
                keep_result=0,
                max_tries=UNBOUNDED_TRIES,
            ),
            func(batches.batch_done, name="batch_done", timeout=t, keep_result=0, max_tries=50),
            func(steps.poll, name="poll", timeout=t, keep_result=0, max_tries=UNBOUNDED_TRIES),
            func(steps.deliver, name="deliver", timeout=t, keep_result=0, max_tries=deliver_tries),
        ],
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": t,
        "keep_result": 0,
        "poll_delay": settings.worker_poll_delay_s,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "job_completion_wait": int(t),
        "max_burst_jobs": -1,
        "retry_jobs": True,
        "handle_signals": True,
        "health_check_interval": 10,
    }
    opts.update({k: v for k, v in overrides.items() if not k.startswith("_")})
    return opts


def make_worker(settings: Settings | None = None, **overrides: Any) -> Worker:
    return Worker(**worker_options(settings or get_settings(), **overrides))


class WorkerSettings:
    """For ``arq worker.WorkerSettings``: every option comes from INTERQ_ settings."""

    _opts = worker_options(get_settings())
    functions = _opts["functions"]
    redis_settings = _opts["redis_settings"]
    queue_name = _opts["queue_name"]
    max_jobs = _opts["max_jobs"]
    job_timeout = _opts["job_timeout"]
    keep_result = _opts["keep_result"]
    poll_delay = _opts["poll_delay"]
    on_startup = _opts["on_startup"]
    on_shutdown = _opts["on_shutdown"]
    job_completion_wait = _opts["job_completion_wait"]
    health_check_interval = _opts["health_check_interval"]
