"""Test fixtures: a real redis-server on a free port (``jobs.dev.harness``), the
simulator and webhook receivers as real loopback HTTP servers, the API through
ASGITransport, and ``stack`` for worker/API processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from jobs.dev.harness import ROOT, Stack, free_port
from jobs.settings import Settings
from tests.fakeclock import FakeClock, Upstream
from tests.helpers import (
    Receiver,
    SimServer,
    app_client,
    fast_settings,
    running_worker,
    worker_env,
)

__all__ = ["ROOT", "free_port"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server owned by this test session (or INTERQ_TEST_REDIS_URL)."""
    given = os.environ.get("INTERQ_TEST_REDIS_URL")
    if given:
        yield given
        return
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    with Stack(tmp_path_factory.mktemp("redis")) as st:
        yield st.start_redis()


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
    with Receiver() as r:
        yield r


@pytest.fixture()
def settings(clean_redis: str, sim: SimServer, tmp_path: Path) -> Settings:
    return fast_settings(
        clean_redis,
        sim.url,
        tmp_path,
        upstream_api_version="v1beta",
        gemini_api_key=None,
        worker_metrics_port=0,
        step_timeout_s=10.0,
        webhook_allow_private=True,
        webhook_schedule_s=[0.2, 0.5, 1.0],
        api_keys={},
    )


@pytest.fixture()
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        yield client


@pytest.fixture()
async def worker(settings: Settings) -> AsyncIterator[None]:
    async with running_worker(settings):
        yield


@pytest.fixture()
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """Processes (``interq worker``, ``interq api``...) with the test settings;
    logs in ``tmp_path/stack/logs``; all stopped at the end."""
    with Stack(tmp_path / "stack", base=worker_env(settings)) as st:
        yield st


@pytest.fixture()
def clock() -> FakeClock:
    """A clock the clocked step tests move by hand (``tests/fakeclock.py``)."""
    return FakeClock()


@pytest.fixture()
def upstream() -> Upstream:
    """A scripted upstream (``httpx.MockTransport``) for the clocked step tests."""
    return Upstream()
