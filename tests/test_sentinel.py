"""Redis through Sentinel: API, worker, dispatcher and budgets all find the
master by asking a real redis-sentinel."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from jobs.cli.main import redis_server_cmd
from jobs.settings import ModelLimit, Settings
from jobs.storage.keys import Keys
from tests.conftest import free_port
from tests.helpers import SimServer, job_body, running_worker, wait_terminal, wait_until


@pytest.fixture()
def sentinel(tmp_path: Path) -> Iterator[tuple[int, int]]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed"
    master_port, sentinel_port = free_port(), free_port()
    procs = [
        subprocess.Popen(
            redis_server_cmd(master_port, str(tmp_path), aof=False), stdout=subprocess.DEVNULL
        )
    ]
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor interq-master 127.0.0.1 {master_port} 1\n"
    )
    procs.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL))
    try:
        s = redis.Redis(port=sentinel_port)

        def master_known() -> bool:
            try:
                return bool(s.sentinel_get_master_addr_by_name("interq-master"))
            except redis.RedisError:
                return False

        for _ in range(200):
            if master_known():
                break
            time.sleep(0.05)
        s.close()
        yield master_port, sentinel_port
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


async def test_jobs_run_through_sentinel(
    sentinel: tuple[int, int], settings: Settings, sim: SimServer
) -> None:
    from api import create_app

    master_port, sentinel_port = sentinel
    cfg = settings.model_copy(
        update={
            "redis_url": "redis://sentinel-decides/0",
            "redis_sentinels": [f"127.0.0.1:{sentinel_port}"],
            "redis_sentinel_master": "interq-master",
            "limits": {"sim-model": ModelLimit(rpm=1000)},
        }
    )
    app = create_app(cfg)
    async with app.router.lifespan_context(app):
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api,
            running_worker(cfg),
        ):
            assert (await api.get("/readyz")).status_code == 200
            ids = [
                (await api.post("/v1/jobs", json=job_body(f"s{i} [sim duration=0.2]"))).json()["id"]
                for i in range(3)
            ]
            done = await wait_terminal(api, ids)
    assert {j["status"] for j in done.values()} == {"completed"}
    direct = redis.Redis(port=master_port)
    assert direct.exists(Keys().job(ids[0]))  # the data is on the master
    assert await wait_until(lambda: direct.keys(Keys().rate_prefix + "*"), what="budget keys")
    direct.close()
