"""Redis trouble is survived, not crashed on: a read-only, full or loading Redis
(from tests/faultproxy.py, or the real server's own refusal) gets 503 JSON from
the API and /readyz, every background loop logs, counts and carries on, and no
worker exits by itself; when the fault lifts, jobs run again."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError

from jobs.observe import metrics
from jobs.settings import Settings
from jobs.work import loops
from tests.conftest import ROOT, free_port
from tests.faultproxy import FaultProxy
from tests.helpers import (
    job_body,
    supervised_worker,
    wait_terminal,
    wait_until,
    worker_env,
)

KINDS = ["readonly", "oom", "loading"]
# The background loops of a worker process. The poll engine ("poller"), the
# delivery loop ("delivery") and the sweeper ("sweeper") join this list as they
# are run under jobs.loops.supervised.
WORKER_LOOPS = ["dispatcher", "poller", "delivery", "worker"]
WORDS = {"readonly": "read-only", "oom": "out of memory", "loading": "loading"}

Sample = Callable[[str, dict[str, str]], float]


def in_process(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(url: str) -> Sample:
    """A reader of one sample from a process's /metrics (0 if absent)."""

    def sample(name: str, labels: dict[str, str]) -> float:
        text = httpx.get(url, timeout=5).text
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    return sample


class LoopWatch:
    """What the loops named say in metrics, against a mark taken at start."""

    def __init__(self, names: Sequence[str], sample: Sample = in_process) -> None:
        self.names, self.sample = list(names), sample
        self.errors = {(n, k): self._errors(n, k) for n in self.names for k in KINDS}

    def _errors(self, loop: str, kind: str) -> float:
        return self.sample("interq_loop_errors_total", {"loop": loop, "kind": kind})

    def _iterations(self, loop: str) -> float:
        return self.sample("interq_loop_iterations_total", {"loop": loop})

    async def erred(self, kind: str, timeout: float = 60) -> None:
        """Every loop counted at least one ``kind`` error since the mark."""

        def rose() -> bool:
            return all(self._errors(n, kind) > self.errors[n, kind] for n in self.names)

        await wait_until(rose, timeout=timeout, interval=0.1, what=f"{self.names} {kind} errors")

    def mark(self) -> None:
        """Call just before the fault lifts: ``recovered`` looks for passes after it."""
        self.since = time.time()
        self.passes = {n: self._iterations(n) for n in self.names}

    async def recovered(self, timeout: float = 60) -> None:
        """Every loop ended a pass well since ``mark`` (iterations rose, and its
        last success is later)."""

        def ok() -> bool:
            return all(
                self._iterations(n) > self.passes[n]
                and self.sample("interq_loop_last_success_timestamp_seconds", {"loop": n})
                >= self.since
                for n in self.names
            )

        await wait_until(ok, timeout=timeout, interval=0.1, what=f"{self.names} passing again")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture()
def proxy(clean_redis: str) -> Iterator[FaultProxy]:
    url = urlparse(clean_redis)
    p = FaultProxy(url.hostname or "127.0.0.1", url.port or 6379).start()
    yield p
    p.stop()


@pytest.fixture()
def psettings(settings: Settings, proxy: FaultProxy) -> Settings:
    """The test settings, with Redis reached through the fault proxy."""
    return settings.model_copy(update={"redis_url": proxy.url})


@asynccontextmanager
async def api_client(cfg: Settings, **transport: Any) -> AsyncIterator[httpx.AsyncClient]:
    from api import create_app

    app = create_app(cfg)
    async with app.router.lifespan_context(app):
        t = httpx.ASGITransport(app=app, **transport)
        async with httpx.AsyncClient(transport=t, base_url="http://interq") as client:
            yield client


def assert_unavailable(r: httpx.Response, kind: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text
    err = r.json()["error"]
    assert err["code"] == "unavailable"
    assert WORDS[kind] in err["message"], err
    assert int(r.headers["retry-after"]) > 0


async def submit(api: httpx.AsyncClient, text: str = "hi [sim duration=0.2]") -> str:
    r = await api.post("/v1/jobs", json=job_body(text))
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


# --------------------------------------------------------------------------- the supervisor


async def test_supervised_loop_counts_each_kind_and_carries_on() -> None:
    errors: list[BaseException] = [
        ReadOnlyError("You can't write against a read only replica."),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        BusyLoadingError("Redis is loading the dataset in memory"),
        ResponseError("OOM command not allowed inside a script"),
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        ValueError("a bug"),
    ]
    kinds = ["readonly", "oom", "loading", "oom", "connection", "timeout", "other"]
    assert [metrics.redis_error_kind(e) for e in errors] == kinds
    before = {k: in_process("interq_loop_errors_total", {"loop": "t", "kind": k}) for k in kinds}
    passed = asyncio.Event()
    todo = list(errors)

    async def step() -> float:
        if todo:
            raise todo.pop(0)
        passed.set()
        return 60.0

    task = asyncio.create_task(loops.supervised("t", step, backoff=loops.Backoff(0.001, 0.01)))
    await asyncio.wait_for(passed.wait(), 30)
    for k in set(kinds):
        got = in_process("interq_loop_errors_total", {"loop": "t", "kind": k}) - before[k]
        assert got == kinds.count(k), k
    assert in_process("interq_loop_iterations_total", {"loop": "t"}) >= 1
    assert in_process("interq_loop_last_success_timestamp_seconds", {"loop": "t"}) > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_backoff_grows_to_its_cap_and_resets() -> None:
    b = loops.Backoff()
    waits = [b.next() for _ in range(12)]
    assert waits[0] <= loops.BACKOFF_INITIAL_S
    assert all(w <= loops.BACKOFF_MAX_S for w in waits)
    assert waits[-1] >= loops.BACKOFF_MAX_S / 2
    b.reset()
    assert b.next() <= loops.BACKOFF_INITIAL_S


# --------------------------------------------------------------------------- the API


@pytest.mark.parametrize("kind", KINDS)
async def test_api_and_loops_ride_out_the_fault(
    kind: str, psettings: Settings, proxy: FaultProxy
) -> None:
    async with api_client(psettings) as api, supervised_worker(psettings):
        first = await submit(api)
        assert (await wait_terminal(api, [first]))[first]["status"] == "completed"
        watch = LoopWatch(WORKER_LOOPS)

        proxy.fault(kind, only="all")  # reads refused too
        assert_unavailable(await api.post("/v1/jobs", json=job_body("refused")), kind)
        assert_unavailable(await api.get(f"/v1/jobs/{first}"), kind)
        r = await api.get("/readyz")
        assert_unavailable(r, kind)
        assert r.json()["error"]["detail"] == kind
        await watch.erred(kind)

        watch.mark()
        proxy.clear()
        await watch.recovered()
        assert (await api.get("/readyz")).json() == {"status": "ready", "upstream_key": "ok"}
        assert (await api.get(f"/v1/jobs/{first}")).status_code == 200
        second = await submit(api)
        assert (await wait_terminal(api, [second]))[second]["status"] == "completed"


async def test_writes_refused_reads_served(psettings: Settings, proxy: FaultProxy) -> None:
    """A read-only Redis (only writes refused, as a replica does): reads are 200."""
    async with api_client(psettings) as api:
        first = await submit(api)
        proxy.fault("readonly")
        assert (await api.get(f"/v1/jobs/{first}")).status_code == 200
        assert_unavailable(await api.post("/v1/jobs", json=job_body("refused")), "readonly")
        assert (await api.get("/readyz")).json()["error"]["detail"] == "readonly"
        proxy.clear()
        assert (await api.get("/readyz")).status_code == 200


@pytest.fixture(params=["oom", "readonly"])
def real_refusal(request: pytest.FixtureRequest, clean_redis: str) -> Iterator[Any]:
    """The test's own redis-server refusing writes by itself: ``maxmemory 1``
    under ``noeviction`` (OOM), or a replica of a master that is not there
    (READONLY). Yields (kind, switch on, switch off)."""
    r = redis.Redis.from_url(clean_redis)
    policy = r.config_get("maxmemory-policy")["maxmemory-policy"]
    dead_master = free_port()

    def on() -> None:
        if request.param == "oom":
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", "1")
        else:
            r.replicaof("127.0.0.1", dead_master)

    def off() -> None:
        r.config_set("maxmemory", "0")
        r.config_set("maxmemory-policy", policy)
        r.replicaof("NO", "ONE")

    try:
        yield request.param, on, off
    finally:
        off()
        r.close()


async def test_real_redis_refusal(real_refusal: Any, settings: Settings) -> None:
    kind, on, off = real_refusal
    # arq writes its health key every health_check_interval (10 s in the service):
    # 1 s here, so that the refused write comes within a second of on()
    async with api_client(settings) as api, supervised_worker(settings, health_check_interval=1):
        first = await submit(api)
        assert (await wait_terminal(api, [first]))[first]["status"] == "completed"
        watch = LoopWatch(["worker"])  # arq's health-key write fails: the Worker is replaced

        on()
        assert_unavailable(await api.post("/v1/jobs", json=job_body("refused")), kind)
        assert (await api.get(f"/v1/jobs/{first}")).status_code == 200  # reads still served
        r = await api.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["detail"] == kind
        await watch.erred(kind)

        watch.mark()
        off()
        await watch.recovered()
        assert (await api.get("/readyz")).status_code == 200
        second = await submit(api)
        assert (await wait_terminal(api, [second]))[second]["status"] == "completed"


# --------------------------------------------------------------------------- a worker process


async def test_worker_started_while_loading_waits_and_works(
    api: httpx.AsyncClient,
    settings: Settings,
    psettings: Settings,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    job = await submit(api)  # straight to Redis: the API is not the subject here
    proxy.fault("loading")
    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "worker"],
            cwd=ROOT,
            env=worker_env(psettings, INTERQ_WORKER_METRICS_PORT=str(port)),
            stdout=log,
            stderr=log,
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"

            def up() -> bool:
                assert proc.poll() is None, log_path.read_text()
                try:
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(up, timeout=60, what="worker metrics")
            watch = LoopWatch(["worker"], scraped(url))
            await watch.erred("loading", timeout=90)
            assert proc.poll() is None, "the worker exited while Redis was loading"

            watch.mark()
            proxy.clear()
            done = await wait_terminal(api, [job], timeout=90)
            assert done[job]["status"] == "completed"
            await watch.recovered()
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, log_path.read_text()[-3000:]
    assert "loading error (BusyLoadingError)" in log_path.read_text()
