"""The worker process behind ``worker.py``: ``interq worker``
(``run_worker_forever``), or arq's own runner, ``arq worker.WorkerSettings``.

One worker process runs, beside arq's own loop (the ``submit`` and
``batch_done`` steps, each short), three background loops: the dispatcher
(one active per deployment, by lease), the poll engine and the delivery engine
(one each per worker). No worker slot is held while an interaction runs
upstream or while a webhook receiver takes its time.

arq's ``Worker.main()`` ends at the first Redis error it meets (still loading
after a restart, read-only after a failover, out of memory, a dropped
connection). ``run_worker_forever`` then logs and counts it
(``interq_loop_errors_total{loop="worker"}``), backs off and starts a fresh
Worker, until SIGTERM/SIGINT (or its ``stop`` event) asks it to stop; SIGTERM
drains as arq does (``job_completion_wait``). arq's own runner exits instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from dataclasses import dataclass, replace
from typing import Any

from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func
from prometheus_client import start_http_server
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from jobs.delivery.engine import DeliveryEngine
from jobs.domain import batches
from jobs.observe import metrics, tracing
from jobs.services import Services
from jobs.settings import Settings, get_settings
from jobs.work import loops, retention, steps
from jobs.work.dispatch import Dispatcher
from jobs.work.poller import PollEngine

log = logging.getLogger("interq.worker")

# arq drops a job whose tries run out, which would strand its record: submit and
# poll re-run with Retry while they wait (budget, backoff, the interaction), and
# are bounded by the job's deadline and INTERQ_MAX_SUBMIT_ATTEMPTS instead.
UNBOUNDED_TRIES = 10_000_000
ENGINE_DRAIN_S = 10.0  # on shutdown, how long polls and deliveries in progress may finish
_SERVING: set[int] = set()  # metrics ports this process already serves
HEALTHY_RUN_S = 60.0  # a Worker that ran this long before failing resets the backoff
TICK_S = 1.0  # while a started Worker runs, a "worker" loop pass is counted this often


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


@dataclass
class Background:
    """The background loops of a worker process: one set per process, not per
    arq Worker (each runs under ``jobs.loops.supervised``)."""

    poller: PollEngine
    delivery: DeliveryEngine
    tasks: list[asyncio.Task[None]]


def background_loops(svc: Services, *, sweeper: bool = True) -> Background:
    poller, delivery = PollEngine(svc), DeliveryEngine(svc)
    tasks = [
        asyncio.create_task(Dispatcher(svc).run(), name="dispatcher"),
        asyncio.create_task(loops.supervised("poller", poller.step), name="poller"),
        asyncio.create_task(loops.supervised("delivery", delivery.step), name="delivery"),
    ]
    if sweeper:
        sweep = functools.partial(retention.sweep_once, svc)
        tasks.append(asyncio.create_task(loops.supervised("sweeper", sweep), name="sweeper"))
    return Background(poller, delivery, tasks)


async def stop_loops(bg: Background | None) -> None:
    """Stop the loops; polls and deliveries in progress get ``ENGINE_DRAIN_S``
    to finish (the rest stay leased and come due again elsewhere)."""
    if bg is None:
        return
    for task in bg.tasks:
        task.cancel()
    await asyncio.gather(*bg.tasks, return_exceptions=True)
    for engine in (bg.poller, bg.delivery):
        if engine.active:
            await asyncio.wait(list(engine.active.values()), timeout=ENGINE_DRAIN_S)
        await engine.stop()


def step_functions(t: float) -> list[Any]:
    """The arq steps a worker runs (each short), with a timeout of ``t`` seconds."""
    return [
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
    ]


def worker_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker`` built from settings. With
    ``_services``, the Worker uses those (and their loops, run by the caller);
    otherwise it opens its own and runs the background loops while it runs."""
    t = settings.step_timeout_s
    shared: Services | None = overrides.pop("_services", None)
    shared_loops: Background | None = overrides.pop("_background", None)
    sweeper = overrides.pop("_sweeper", True)  # tests that drive the clock turn it off

    async def on_startup(ctx: dict[str, Any]) -> None:
        if shared is not None and shared_loops is not None:
            ctx["svc"] = shared
            ctx["poller"] = shared_loops.poller
        else:
            svc = ctx["svc"] = Services.open(
                settings, upstream_transport=overrides.pop("_transport", None)
            )
            bg = ctx["loops"] = background_loops(svc, sweeper=sweeper)
            ctx["poller"] = bg.poller
        metrics.WORKER_UP.set(1)
        ctx["started_at"] = time.time()
        _serve_metrics(settings.worker_metrics_port)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if ctx.get("ended_by_error"):
            log.info("worker stopping after an error: running steps cancelled, they re-run")
        else:
            log.info("worker stopping: running steps drained, no new ones taken")
        metrics.WORKER_UP.set(0)
        await stop_loops(ctx.pop("loops", None))
        if "svc" in ctx and shared is None:
            await ctx["svc"].close()

    opts: dict[str, Any] = {
        "functions": step_functions(t),
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


async def run_worker_forever(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    **overrides: Any,
) -> None:
    """Run arq Workers one after another until ``stop`` is set or (with
    ``handle_signals``) SIGTERM/SIGINT arrives. A Worker that ends by itself is
    retired and, after a backoff, replaced; the services and the background
    loops (``background_loops``) outlive it. The signal handlers are ours, not
    arq's, so that they outlive each Worker; they drain it as arq's would."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    _serve_metrics(settings.worker_metrics_port)  # also while no Worker can start
    # arq's own connection retries are silent; this loop retries, counted
    overrides.setdefault("redis_settings", replace(redis_settings(settings), conn_retries=0))
    svc = overrides["_services"] = Services.open(
        settings, upstream_transport=overrides.pop("_transport", None)
    )
    bg = overrides["_background"] = background_loops(svc)
    backoff = loops.Backoff()
    traced = tracing.setup("interq-worker")  # only when OTEL_* asks for it
    try:
        for sig in signals:
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        while not stop.is_set():
            delay = await _one_worker(settings, stop, backoff, overrides)
            if delay is None:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await stop_loops(bg)
        await svc.close()
        if traced:
            tracing.shutdown()


async def _one_worker(
    settings: Settings, stop: asyncio.Event, backoff: loops.Backoff, overrides: dict[str, Any]
) -> float | None:
    """Run one arq Worker to its end and retire it. Returns the wait before
    the next one, or None when none should follow (stopped, or it just ended)."""
    w = make_worker(settings, **{**overrides, "handle_signals": False})
    error: BaseException | None = None
    delay = 0.0
    try:
        error = await _run_until_stopped(w, stop, errors_before=backoff.failures)
        if error is not None:
            if time.time() - w.ctx.get("started_at", time.time()) >= HEALTHY_RUN_S:
                backoff.reset()  # it ran well for a while: a new streak of trouble
            delay = backoff.next()
            loops.record_error("worker", error, delay, streak=backoff.failures)
            w.ctx["ended_by_error"] = True
    finally:
        await _retire(w, clean=error is None)
    return None if stop.is_set() or error is None else delay


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("worker: %s received, stopping", sig.name)
    stop.set()


def _serve_metrics(port: int) -> None:
    """Serve /metrics on ``port`` (0: not at all), once per process."""
    if not port or port in _SERVING:
        return
    try:
        start_http_server(port)
        _SERVING.add(port)
    except OSError as e:
        log.warning("worker metrics port %d unavailable: %s", port, e)


async def _run_until_stopped(
    w: Worker, stop: asyncio.Event, *, errors_before: int
) -> BaseException | None:
    """Run ``w.main()`` until it ends or ``stop`` is set (then drain ``w`` as
    arq's SIGTERM handler does), counting a pass of the "worker" loop every
    ``TICK_S`` while it runs started. Returns the error that ended it, if any."""
    main = w.main_task = asyncio.create_task(w.main())
    stopping = asyncio.create_task(stop.wait())
    try:
        passes = 0
        while True:
            done, _ = await asyncio.wait(
                {main, stopping}, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                break
            if "started_at" in w.ctx:
                loops.record_success("worker", after_errors=0 if passes else errors_before)
                passes += 1
        if not main.done():
            if w._job_completion_wait:
                w.handle_sig_wait_for_completion(signal.SIGTERM)
            else:
                w.handle_sig(signal.SIGTERM)
            await asyncio.wait({main})
    finally:
        stopping.cancel()
        if not main.done():  # we are cancelled ourselves: stop at once
            main.cancel()
            await asyncio.wait({main})
    if main.cancelled():
        return None
    return main.exception()


async def _retire(w: Worker, *, clean: bool) -> None:
    """Close a Worker whose main() has ended. (arq's ``close()`` stops half-way
    when Redis refuses its health-key delete, and never runs ``on_shutdown``.)"""
    for t in w.tasks.values():
        t.cancel()  # after a drain they are done; after trouble they re-run later
    await asyncio.gather(*w.tasks.values(), return_exceptions=True)
    w.tasks.clear()
    pool = w._pool  # None if main() never got as far as connecting
    try:
        if clean and pool is not None:
            with contextlib.suppress(RedisError, OSError):
                await pool.delete(w.health_check_key)
        if w.on_shutdown and "svc" in w.ctx:  # on_startup ran
            await w.on_shutdown(w.ctx)
    except Exception:  # the next Worker must start all the same
        log.exception("worker: shutting an arq Worker down failed")
    finally:
        if pool is not None:
            with contextlib.suppress(RedisError, OSError):
                await pool.close(close_connection_pool=True)
            w._pool = None
