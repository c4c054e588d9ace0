"""Test harness: a real redis-server on a free port, the simulator and webhook
receivers as real loopback HTTP servers, the API through ASGITransport."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from jobs.cli.main import redis_server_cmd
from jobs.settings import Settings
from tests.helpers import Receiver, SimServer, running_worker

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server owned by this test session (or INTERQ_TEST_REDIS_URL)."""
    given = os.environ.get("INTERQ_TEST_REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="interq-redis-")
    proc = subprocess.Popen(
        redis_server_cmd(port, tmp, aof=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def clean_redis(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


@pytest.fixture()
def sim() -> Iterator[SimServer]:
    server = SimServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture()
def settings(clean_redis: str, sim: SimServer, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=clean_redis,
        upstream_url=sim.url,
        upstream_api_version="v1beta",
        gemini_api_key=None,
        results_url=f"file://{tmp_path / 'results'}",
        poll_initial_s=0.2,
        poll_max_s=1.0,
        retry_initial_s=0.2,
        retry_max_s=2.0,
        worker_poll_delay_s=0.05,
        worker_metrics_port=0,
        step_timeout_s=10.0,
        webhook_allow_private=True,
        webhook_schedule_s=[0.2, 0.5, 1.0],
        api_keys={},
    )


@pytest.fixture()
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from api import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as client:
            yield client


@pytest.fixture()
async def worker(settings: Settings) -> AsyncIterator[None]:
    async with running_worker(settings):
        yield
