"""Loopback servers and waiting helpers shared by the tests. The webhook
receiver is ``jobs.dev.receiver.Receiver``; processes run under
``jobs.dev.harness.Stack`` (the ``stack`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from jobs.dev.envs import env_for
from jobs.dev.receiver import Delivery, Receiver
from jobs.dev.simulator.app import SimConfig, create_app
from jobs.domain.records import Event, EventState, Job
from jobs.settings import Settings

__all__ = ["Delivery", "Receiver"]  # the one webhook receiver, jobs.dev.receiver

TERMINAL = {"completed", "failed", "cancelled", "incomplete", "expired"}


class AppServer:
    """An ASGI app served by uvicorn on loopback, in a thread."""

    def __init__(self, app: Any, port: int, lifespan: str = "off") -> None:
        self.port = port
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan=lifespan,
                # a request still in flight at stop (the simulator holding a
                # poll for a slow fault) is cancelled after 1 s, not waited for
                timeout_graceful_shutdown=1,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return
            threading.Event().wait(0.01)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class SimServer(AppServer):
    """The simulator served by uvicorn on loopback, in a thread."""

    def __init__(self, port: int, config: SimConfig | None = None) -> None:
        super().__init__(create_app(config or SimConfig(duration_s=0.3)), port)

    @property
    def state(self) -> Any:
        return self.app.state.sim


async def wait_until(
    check: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Await a condition (sync or async callable) becoming truthy."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(interval)


async def wait_terminal(
    api: httpx.AsyncClient, job_ids: list[str], timeout: float = 120.0
) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}

    async def check() -> bool:
        for jid in job_ids:
            if jid in done:
                continue
            r = await api.get(f"/v1/jobs/{jid}")
            job = r.json()
            if job["status"] in TERMINAL:
                done[jid] = job
        return len(done) == len(job_ids)

    await wait_until(check, timeout=timeout, interval=0.2, what=f"{len(job_ids)} jobs terminal")
    return done


async def settled_event(api: httpx.AsyncClient, jid: str) -> dict[str, Any]:
    """The job's one webhook event, once it is no longer pending."""

    async def settled() -> list[dict[str, Any]] | None:
        r = await api.get(f"/v1/jobs/{jid}/deliveries")
        assert r.status_code == 200
        evs: list[dict[str, Any]] = r.json()["data"]
        return evs if evs and evs[0]["state"] != "pending" else None

    [ev] = await wait_until(settled, what="the event settled")
    return ev


@asynccontextmanager
async def running_worker(settings: Settings, **overrides: Any) -> AsyncIterator[Any]:
    """An arq worker running in this event loop until the block ends."""
    from worker import make_worker

    w = make_worker(settings, handle_signals=False, **overrides)
    task = asyncio.create_task(w.async_run())
    try:
        yield w
    finally:
        await cancelled(task)
        # let in-flight steps end (a cancelled one re-runs later, as after a crash)
        for t in w.tasks.values():
            t.cancel()
        await asyncio.gather(*w.tasks.values(), return_exceptions=True)
        w.tasks.clear()
        await w.close()


@asynccontextmanager
async def supervised_worker(
    settings: Settings, **overrides: Any
) -> AsyncIterator[asyncio.Task[None]]:
    """``run_worker_forever`` (what ``interq worker`` runs: a Worker that ends on
    Redis trouble is replaced) in this event loop until the block ends."""
    from worker import run_worker_forever

    task = asyncio.create_task(run_worker_forever(settings, handle_signals=False, **overrides))
    try:
        yield task
    finally:
        await cancelled(task)


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def job_body(text: str = "Say hello", webhook: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"interaction": {"model": "sim-model", "input": text}, **extra}
    if webhook:
        body["webhook"] = {"url": webhook}
    return body


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a worker (or API) process with these settings
    (``jobs.dev.envs.env_for``, plus the tests' own defaults)."""
    defaults = {
        "INTERQ_WORKER_METRICS_PORT": "0",
        "INTERQ_WEBHOOK_ALLOW_PRIVATE": "true",
        # a short step timeout makes arq's in-progress lock (timeout + 10 s) short
        "INTERQ_STEP_TIMEOUT_S": "5",
    }
    return env_for(settings, **{**defaults, **extra})


def fast_settings(redis_url: str, upstream_url: str, results_dir: Path, **changes: Any) -> Settings:
    """The settings the tests run with: this Redis and upstream, results under
    ``results_dir``, short poll and retry intervals; ``changes`` on top."""
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "upstream_url": upstream_url,
        "results_url": f"file://{results_dir / 'results'}",
        "poll_initial_s": 0.2,
        "poll_max_s": 1.0,
        "retry_initial_s": 0.2,
        "retry_max_s": 2.0,
        "worker_poll_delay_s": 0.05,
    }
    return Settings(**(base | changes))


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with its lifespan run, and a client calling it in process."""
    from api import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as client:
            yield client


def hand_event(job: Job, state: EventState) -> Event:
    """An event of ``job`` for tests that drive transitions by hand."""
    return Event(
        id=f"evt_{job.id}_{job.status}",
        owner=job.ref,
        job_id=job.id,
        tenant=job.tenant,
        type="job.x",
        body="{}",
        state=state,
        created_at=1.0,
    )
