"""Loopback servers and waiting helpers shared by the tests."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobs.dev.simulator.app import SimConfig, create_app
from jobs.settings import Settings

TERMINAL = {"completed", "failed", "cancelled", "incomplete", "expired"}


class AppServer:
    """An ASGI app served by uvicorn on loopback, in a thread."""

    def __init__(self, app: Any, port: int, lifespan: str = "off") -> None:
        self.port = port
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan)
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


@dataclass
class Delivery:
    msg_id: str
    verified: bool
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    """A webhook receiver on loopback that verifies every delivery with the
    ``standardwebhooks`` library, unchanged."""

    secret: str | None = None
    fail_first: int = 0  # answer 503 to the first N requests
    deliveries: list[Delivery] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: dict[str, str] = {}  # job id -> secret, when not one shared secret
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with recv.lock:
                    recv.requests += 1
                    if recv.requests <= recv.fail_first:
                        self.send_response(503)
                        self.end_headers()
                        return
                body = json.loads(raw)
                job_id = body.get("data", {}).get("id", "")
                secret = recv.secrets.get(job_id) or recv.secret
                verified = False
                if secret:
                    try:
                        Webhook(secret).verify(raw, headers)
                        verified = True
                    except WebhookVerificationError:
                        verified = False
                with recv.lock:
                    recv.deliveries.append(
                        Delivery(headers.get("webhook-id", ""), verified, body, headers)
                    )
                self.send_response(204 if verified else 400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)


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


@asynccontextmanager
async def running_worker(settings: Settings, **overrides: Any) -> AsyncIterator[Any]:
    """An arq worker running in this event loop until the block ends."""
    from worker import make_worker

    w = make_worker(settings, handle_signals=False, **overrides)
    task = asyncio.create_task(w.async_run())
    try:
        yield w
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
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
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def job_body(text: str = "Say hello", webhook: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"interaction": {"model": "sim-model", "input": text}, **extra}
    if webhook:
        body["webhook"] = {"url": webhook}
    return body


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a worker (or API) process with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERQ_", "GEMINI_"))}
    env.update(
        {
            "INTERQ_REDIS_URL": settings.effective_redis_url,
            "INTERQ_UPSTREAM_URL": settings.upstream_url,
            "INTERQ_RESULTS_URL": settings.results_url,
            "INTERQ_POLL_INITIAL_S": str(settings.poll_initial_s),
            "INTERQ_POLL_MAX_S": str(settings.poll_max_s),
            "INTERQ_RETRY_INITIAL_S": str(settings.retry_initial_s),
            "INTERQ_RETRY_MAX_S": str(settings.retry_max_s),
            "INTERQ_WORKER_POLL_DELAY_S": str(settings.worker_poll_delay_s),
            "INTERQ_WORKER_METRICS_PORT": "0",
            "INTERQ_WEBHOOK_ALLOW_PRIVATE": "true",
            "INTERQ_WEBHOOK_SCHEDULE_S": ",".join(str(x) for x in settings.webhook_schedule_s),
            # a short step timeout makes arq's in-progress lock (timeout + 10 s) short
            "INTERQ_STEP_TIMEOUT_S": "5",
            **extra,
        }
    )
    return env
