"""Test fixtures: a real redis-server on a free port (``jobs.dev.harness``), the
simulator and webhook receivers as real loopback HTTP servers, the API through
ASGITransport, and ``stack`` for worker/API processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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

# The longest tests, longest first (roughly 20-45 s each on the idle 2-core
# machine): they start first, so that none is left running alone at the end of
# an xdist run while the other workers idle. Each xdist worker takes the next
# unit of work as it runs out (``pytest_xdist_make_scheduler`` below).
SLOW_FIRST = (
    "tests/test_chaos.py::",
    "tests/test_schema_fuzz.py::",
    "tests/test_redis_trouble.py::test_worker_started_while_loading_waits_and_works",
    "tests/test_faults.py::",
    "tests/test_crash.py::",
    "tests/test_up_supervision.py::",
    "tests/test_redis_trouble.py::test_api_and_loops_ride_out_the_fault[loading]",
    "tests/test_prometheus.py::",
    "tests/test_batch_pause.py::test_a_refused_batch_of_1000",
    "tests/test_ui.py::test_ops_page_in_chromium",
    "tests/test_engine.py::test_hundreds_of_polls",
    "tests/test_redis_trouble.py::test_real_redis_refusal",
    "tests/test_drain.py::",
    "tests/test_up.py::",
    "tests/test_cli.py::",
    "tests/test_retention.py::test_the_workers_sweeper",
)
# Modules whose tests share a costly module-scoped fixture (a Prometheus over a
# small run, a TLS Redis, a moto S3 server): one xdist worker runs all of a
# module's tests, one after another, so that the fixture is made once.
SHARED_MODULE_FIXTURE = {
    "tests/test_prometheus.py",
    "tests/test_redis_tls.py",
    "tests/test_storage.py",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of ``SLOW_FIRST`` first, in its order; the rest as collected."""

    def rank(item: pytest.Item) -> int:
        return next(
            (i for i, p in enumerate(SLOW_FIRST) if item.nodeid.startswith(p)), len(SLOW_FIRST)
        )

    items.sort(key=rank)  # stable: collection order within a rank


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's ``--dist loadscope`` with a unit of work per test, but one per
    module for the modules of ``SHARED_MODULE_FIXTURE``. (``--dist loadgroup``
    would do it with ``xdist_group`` marks, but xdist 3.8 sets the group on
    ``item._nodeid``, which pytest 9 no longer reads: the marks do nothing.)"""
    from xdist.scheduler import LoadScopeScheduling

    if config.getoption("dist") != "load":  # another --dist asked for: xdist's own
        return None

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_MODULE_FIXTURE else nodeid

    return Scheduling(config, log)


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
