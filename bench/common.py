"""Shared plumbing for the benchmarks: a private redis-server, the simulator,
the API and workers as real processes on loopback, torn down at exit."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Stack:
    redis_url: str = ""
    sim_url: str = ""
    api_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def spawn(self, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env=env or self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    def sim_config(self, **cfg: Any) -> None:
        httpx.post(f"{self.sim_url}/_sim/config", json=cfg, timeout=10).raise_for_status()

    def sim_reset(self) -> None:
        httpx.post(f"{self.sim_url}/_sim/reset", timeout=10).raise_for_status()

    def sim_stats(self) -> dict[str, Any]:
        r = httpx.get(f"{self.sim_url}/_sim/stats", timeout=60)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data


@contextlib.contextmanager
def stack(workers: int = 1, api: bool = True, **interq_env: str) -> Iterator[Stack]:
    """redis-server + simulator (+ API + workers) with INTERQ_* overrides."""
    st = Stack()
    tmp = tempfile.mkdtemp(prefix="interq-bench-")
    try:
        rport = free_port()
        st.spawn(
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        )
        st.redis_url = f"redis://127.0.0.1:{rport}/0"
        sport = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INTERQ_", "GEMINI_"))}
        st.spawn(sys.executable, "-m", "jobs.cli", "simulator", "--port", str(sport), env=base)
        st.sim_url = f"http://127.0.0.1:{sport}"
        st.env = {
            **base,
            "INTERQ_REDIS_URL": st.redis_url,
            "INTERQ_UPSTREAM_URL": st.sim_url,
            "INTERQ_RESULTS_URL": f"file://{tmp}/results",
            "INTERQ_WORKER_METRICS_PORT": "0",
            "INTERQ_WEBHOOK_ALLOW_PRIVATE": "true",
            **interq_env,
        }
        wait_http(f"{st.sim_url}/_sim/stats")
        if api:
            aport = free_port()
            st.spawn(
                sys.executable,
                "-m",
                "uvicorn",
                "api:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(aport),
                "--log-level",
                "warning",
            )
            st.api_url = f"http://127.0.0.1:{aport}"
            wait_http(f"{st.api_url}/healthz")
        for _ in range(workers):
            st.spawn(sys.executable, "-m", "jobs.cli", "worker")
        yield st
    finally:
        for p in reversed(st.procs):
            if p.poll() is None:
                p.terminate()
        for p in st.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
