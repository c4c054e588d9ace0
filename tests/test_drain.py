"""SIGTERM drains a worker: its current steps finish, it takes no new ones, it
exits 0, and nothing is lost. Its logs are JSON lines carrying job ids."""

from __future__ import annotations

import json
import signal

import httpx

from jobs.dev.harness import Stack
from jobs.settings import Settings
from tests.helpers import SimServer, job_body, running_worker, wait_terminal, wait_until


async def test_sigterm_drains_and_exits_zero(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer, stack: Stack
) -> None:
    ids = [
        (await api.post("/v1/jobs", json=job_body(f"j{i} [sim duration=2]"))).json()["id"]
        for i in range(30)
    ]
    proc = stack.start_worker("worker", INTERQ_LOG_FORMAT="json")

    async def some_running() -> bool:
        r = (await api.get("/v1/jobs", params={"status": "running"})).json()
        return len(r["data"]) >= 5

    await wait_until(some_running, timeout=60, what="jobs running")
    code = stack.kill("worker", signal.SIGTERM)
    log_path = proc.logs[-1]
    assert code == 0
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    assert lines, "the worker writes JSON log lines"
    assert any(line.get("job_id") in ids for line in lines), "log lines carry the job id"
    assert any("worker stopping" in line.get("message", "") for line in lines)

    async with running_worker(settings):
        done = await wait_terminal(api, ids, timeout=120)
    assert {j["status"] for j in done.values()} == {"completed"}
    creates = sim.state.creates_by_label("interq_job")
    assert all(n == 1 or done[j]["possible_duplicate"] for j, n in creates.items())
