"""The real ``interq up`` as a process: it starts its own Redis (on a free port,
never 6379), the simulator (no GEMINI_API_KEY), the API and a worker; restarts
the worker after a SIGKILL on the same metrics port; runs a job to the end; and
on SIGTERM exits leaving none of its descendants (children or grandchildren)
alive. Descendants are found by walking ``/proc/*/stat`` parent pids."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.dev.harness import ROOT, base_env, free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

WAIT_S = 60.0  # each bounded wait; the test's own timeout bounds the whole


# -- processes, from /proc


def stat_of(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parens
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> set[tuple[int, int]]:
    """Every live process under ``root``, as (pid, start time) so a reused pid
    is not mistaken for one of them."""
    parent: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := stat_of(int(entry))) is not None:
            parent[int(entry)] = (st[1], st[2])
    found: set[tuple[int, int]] = set()
    frontier = {root}
    while frontier:
        kids = {pid for pid, (ppid, _) in parent.items() if ppid in frontier}
        found |= {(pid, parent[pid][1]) for pid in kids}
        frontier = kids
    return found


def alive(pid: int, started: int) -> bool:
    st = stat_of(pid)
    return st is not None and st[2] == started and st[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# -- the running `interq up`


@dataclass
class Up:
    popen: subprocess.Popen[bytes]
    log: Path
    api: str
    metrics: str
    seen: set[tuple[int, int]] = field(default_factory=set)

    def collect(self) -> set[tuple[int, int]]:
        """Record the descendants running now (they must all be gone at the end)."""
        now = descendants(self.popen.pid)
        self.seen |= now
        return now

    def worker_pid(self) -> int:
        pids = [pid for pid, _ in self.collect() if "jobs.cli worker" in cmdline(pid)]
        return pids[0] if len(pids) == 1 else 0

    def wait(self, check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        """Poll ``check`` until truthy (bounded); fail with up's log if it exits."""
        end = time.monotonic() + timeout
        while True:
            self.collect()
            if (value := check()) or self.popen.poll() is not None:
                if value:
                    return value
                pytest.fail(f"interq up exited ({self.popen.returncode})\n{self.tail()}")
            if time.monotonic() > end:
                pytest.fail(f"timed out waiting for {what}\n{self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def worker_up(metrics: str) -> bool:
    r = get(metrics)
    return r is not None and "interq_worker_up 1.0" in r.text


@pytest.fixture()
def up(tmp_path: Path) -> Iterator[Up]:
    api, sim, redis, metrics = free_port(), free_port(), free_port(), free_port()
    env = {**base_env(), "INTERQ_WORKER_METRICS_PORT": str(metrics), "PYTHONPATH": str(ROOT)}
    args = ["up", "--port", str(api), "--sim-port", str(sim), "--redis-port", str(redis)]
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    u = Up(popen, log, f"http://127.0.0.1:{api}", f"http://127.0.0.1:{metrics}/metrics")
    try:
        yield u
    finally:  # a failed test leaves nothing behind either
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)
        for pid, started in u.seen | descendants(popen.pid):
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


def submit_and_finish(u: Up) -> dict[str, Any]:
    body = {
        "interaction": {
            "model": "gemini-3.5-flash",
            "input": "hello from the up test [sim duration=0.2]",
        }
    }
    r = httpx.post(f"{u.api}/v1/jobs", json=body, timeout=10)  # no keys set: no auth
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def completed() -> dict[str, Any] | None:
        got = get(f"{u.api}/v1/jobs/{job_id}")
        job: dict[str, Any] | None = got.json() if got is not None else None
        if job is not None and job["status"] not in ("queued", "running"):
            return job
        return None

    return dict(u.wait(completed, f"job {job_id} to finish"))


@pytest.mark.timeout(180)
def test_up_restarts_a_killed_worker_and_leaves_no_orphans(up: Up) -> None:
    # supervision starts once `up` has started everything (a child that dies
    # while `up` is still starting it ends `up`: a config error, not a crash)
    up.wait(lambda: "interq is up" in up.log.read_text(errors="replace"), "up to finish starting")
    up.wait(lambda: (r := get(f"{up.api}/healthz")) is not None and r.status_code == 200, "API")
    up.wait(lambda: worker_up(up.metrics), "the worker's /metrics")
    old = up.wait(up.worker_pid, "one worker process")
    names = " ".join(cmdline(pid) for pid, _ in up.collect())
    assert "redis-server" in names and "jobs.cli simulator" in names, names

    os.kill(old, signal.SIGKILL)
    new = up.wait(lambda: (pid := up.worker_pid()) not in (0, old) and pid, "a new worker")
    up.wait(lambda: worker_up(up.metrics), "the new worker's /metrics on the same port")
    assert up.worker_pid() == new

    job = submit_and_finish(up)
    assert job["status"] == "completed", job

    up.collect()
    up.popen.send_signal(signal.SIGTERM)
    up.popen.wait(120)  # bounded; pytest-timeout bounds the whole
    left = {(pid, cmdline(pid)) for pid, started in up.seen if alive(pid, started)}
    assert up.popen.returncode == 0, up.tail()
    assert not left, f"orphans after SIGTERM: {left}\n{up.tail()}"
