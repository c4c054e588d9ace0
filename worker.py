"""arq worker: ``arq worker.WorkerSettings`` (or ``interq worker``).

One worker process runs, beside arq's own loop (the ``submit`` and
``batch_done`` steps, each short), three background loops: the dispatcher
(one active per deployment, by lease), the poll engine and the delivery engine
(one each per worker). No worker slot is held while an interaction runs
upstream or while a webhook receiver takes its time.
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

from jobs import batches, metrics, steps
from jobs.delivery import DeliveryEngine
from jobs.dispatch import Dispatcher
from jobs.engine import DueEngine
from jobs.poller import PollEngine
from jobs.services import Services
from jobs.settings import Settings, get_settings

log = logging.getLogger("interq.worker")

# arq drops a job whose tries run out, which would strand its record: submit and
# poll re-run with Retry while they wait (budget, backoff, the interaction), and
# are bounded by the job's deadline and INTERQ_MAX_SUBMIT_ATTEMPTS instead.
UNBOUNDED_TRIES = 10_000_000
ENGINE_DRAIN_S = 10.0  # on shutdown, how long polls and deliveries in progress may finish


async def run_engine(engine: DueEngine) -> None:
    """Run an engine's loop until cancelled; an error is logged and backed off."""
    backoff = 0.1
    while True:
        try:
            wait = await engine.step()
            backoff = 0.1
        except Exception as e:
            log.warning("%s loop: %s; backing off %.1f s", engine.name, type(e).__name__, backoff)
            wait, backoff = backoff, min(5.0, backoff * 2)
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            await asyncio.sleep(0)


async def stop_engine(engine: DueEngine, loop: asyncio.Task[None]) -> None:
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    if engine.active:
        await asyncio.wait(list(engine.active.values()), timeout=ENGINE_DRAIN_S)
    await engine.stop()


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

    async def on_startup(ctx: dict[str, Any]) -> None:
        svc = ctx["svc"] = Services.open(
            settings, upstream_transport=overrides.pop("_transport", None)
        )
        ctx["dispatcher"] = asyncio.create_task(Dispatcher(svc).run())
        ctx["poller"] = PollEngine(svc)
        ctx["engines"] = [
            (e, asyncio.create_task(run_engine(e))) for e in (ctx["poller"], DeliveryEngine(svc))
        ]
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
        for engine, loop in ctx.get("engines", []):
            await stop_engine(engine, loop)
        if "dispatcher" in ctx:
            ctx["dispatcher"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctx["dispatcher"]
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
            # steps queued by versions before the engines: they only hand over
            func(steps.poll, name="poll", timeout=t, keep_result=0, max_tries=50),
            func(steps.deliver, name="deliver", timeout=t, keep_result=0, max_tries=50),
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
