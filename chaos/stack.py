"""The chaos run's processes: a private redis-server (append-only, restartable on the
same port and data), the simulator, the API and N worker slots, with logs."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, free_port, wait_http
from chaos.config import Options
from chaos.logs import exit_reason
from jobs.cli.main import redis_server_cmd


@dataclass
class Slot:
    index: int
    gen: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class Cluster:
    """The service's processes (and Redis) with logs in ``tmp/logs``."""

    opts: Options
    tmp: Path
    say: Callable[[str], None]
    redis_port: int = 0
    sim_url: str = ""
    api_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    redis_proc: subprocess.Popen[bytes] | None = None
    redis_gen: int = 0
    sim_proc: subprocess.Popen[bytes] | None = None
    api_proc: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    slots: list[Slot] = field(default_factory=list)
    every: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    self_exits: list[dict[str, Any]] = field(default_factory=list)
    api_exits: list[dict[str, Any]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(log)
        with log.open("ab") as out:
            # own session: a Ctrl-C reaches only this driver, which stops them in order
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.every.append(proc)
        return proc

    # -- redis
    def fill_ballast(self, n: int) -> None:
        """``n`` keys of other data (hashes of a few hundred bytes), compacted
        into the append-only file, so that a restart has a real load to do
        and the processes meet Redis answering LOADING for a while."""
        if n <= 0:
            return
        client = redis.Redis(port=self.redis_port)
        try:
            for start in range(0, n, 10_000):
                with client.pipeline(transaction=False) as pipe:
                    for i in range(start, min(n, start + 10_000)):
                        pipe.hset(f"ballast:{{{i}}}", mapping={"a": "x" * 200, "b": str(i)})
                    pipe.execute()
            while True:  # compact it all into the base file (after any automatic rewrite)
                while client.info("persistence").get("aof_rewrite_in_progress"):
                    time.sleep(0.1)
                try:
                    client.bgrewriteaof()
                    break
                except redis.ResponseError as e:
                    if "in progress" not in str(e):
                        raise
            while client.info("persistence").get("aof_rewrite_in_progress"):
                time.sleep(0.1)
        finally:
            client.close()

    def start_redis(self) -> None:
        if not self.redis_port:
            self.redis_port = free_port()
        data = self.tmp / "redis"
        data.mkdir(exist_ok=True)
        self.redis_gen += 1
        cmd = redis_server_cmd(self.redis_port, str(data), aof=True, fsync_always=True)
        self.redis_proc = self.spawn(f"redis-{self.redis_gen}", cmd, dict(os.environ))
        end = time.monotonic() + 30
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1, socket_timeout=2)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    if self.redis_proc.poll() is not None:
                        raise RuntimeError(
                            f"redis-server exited ({self.redis_proc.returncode}); "
                            f"see {self.logs[-1]}"
                        ) from None
                if time.monotonic() > end:
                    raise RuntimeError("redis-server did not answer within 30 s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop_redis(self) -> None:
        assert self.redis_proc is not None
        if self.opts.redis_stop == "term":
            self.redis_proc.terminate()
        else:
            self.redis_proc.kill()
        self.redis_proc.wait(30)

    # -- the service
    def start_sim(self) -> None:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INTERQ_", "GEMINI_"))}
        cmd = [sys.executable, "-m", "jobs.cli", "simulator", "--port", str(port)]
        self.sim_proc = self.spawn("simulator", cmd, base)
        self.sim_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.sim_url}/_sim/stats", timeout=60)

    def start_api(self) -> None:
        if not self.api_port:
            self.api_port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "api:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.api_port), "--log-level", "warning"]
        self.api_proc = self.spawn(f"api-{len(self.api_exits)}", cmd, self.env)
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        wait_http(f"{self.api_url}/healthz", timeout=60)

    def start_worker(self, slot: Slot) -> None:
        slot.gen += 1
        name = f"worker-{slot.index}-{slot.gen}"
        slot.proc = self.spawn(name, [sys.executable, "-m", "jobs.cli", "worker"], self.env)
        slot.log = self.logs[-1]

    def interq_env(self, receiver_schedule: str) -> None:
        o = self.opts
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INTERQ_", "GEMINI_"))}
        self.env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            "INTERQ_REDIS_URL": self.redis_url,
            "INTERQ_UPSTREAM_URL": self.sim_url,
            "INTERQ_RESULTS_URL": f"file://{self.tmp}/results",
            "INTERQ_WORKER_METRICS_PORT": "0",
            "INTERQ_WEBHOOK_ALLOW_PRIVATE": "true",
            "INTERQ_STEP_TIMEOUT_S": str(o.step_timeout_s),
            "INTERQ_UPSTREAM_TIMEOUT_S": "1",
            "INTERQ_CREATE_TIMEOUT_S": "1",
            "INTERQ_POLL_INITIAL_S": "0.5",
            "INTERQ_POLL_MAX_S": "2",
            "INTERQ_RETRY_INITIAL_S": "0.2",
            "INTERQ_RETRY_MAX_S": "2",
            "INTERQ_WORKER_POLL_DELAY_S": "0.1",
            "INTERQ_WEBHOOK_SCHEDULE_S": receiver_schedule,
            "INTERQ_WEBHOOK_TIMEOUT_S": "2",
        }

    def start_service(self) -> None:
        self.start_redis()
        self.fill_ballast(self.opts.ballast_keys)
        self.start_sim()
        self.interq_env(self.opts.webhook_schedule)
        self.start_api()
        self.slots = [Slot(i) for i in range(self.opts.workers)]
        for slot in self.slots:
            self.start_worker(slot)

    # -- chaos and supervision
    def kill_random_worker(self, rng: random.Random) -> None:
        alive = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
        if not alive:
            return
        slot = rng.choice(alive)
        assert slot.proc is not None
        slot.proc.send_signal(signal.SIGKILL)
        slot.proc.wait(10)
        self.kills.append({"t": self.now(), "worker": f"{slot.index}-{slot.gen}"})
        self.say(f"t={self.now():6.1f}s  SIGKILL worker {slot.index}-{slot.gen}; replacing it")
        self.start_worker(slot)

    def supervise(self) -> None:
        """Restart a worker that exited on its own; note an API that died (a failure)."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                rc = slot.proc.returncode
                why = exit_reason(slot.log)
                self.self_exits.append(
                    {
                        "t": self.now(),
                        "worker": f"{slot.index}-{slot.gen}",
                        "returncode": rc,
                        "reason": why,
                    }
                )
                self.say(
                    f"t={self.now():6.1f}s  worker {slot.index}-{slot.gen} exited by itself "
                    f"({rc}: {why[:160]}); supervisor restarts it"
                )
                self.start_worker(slot)
        if self.api_proc is not None and self.api_proc.poll() is not None:
            self.api_exits.append({"t": self.now(), "returncode": self.api_proc.returncode})
            self.say(f"t={self.now():6.1f}s  API EXITED ({self.api_proc.returncode}); restarting")
            self.start_api()
        if self.sim_proc is not None and self.sim_proc.poll() is not None:
            raise RuntimeError(f"the simulator exited ({self.sim_proc.returncode})")

    def close(self) -> None:
        """Stop everything: workers and the API first (they drain on SIGTERM while
        Redis is still up), then the simulator and Redis."""
        backends = {id(p) for p in (self.redis_proc, self.sim_proc) if p is not None}
        front = [p for p in self.every if id(p) not in backends]
        for group in (front, [p for p in self.every if id(p) in backends]):
            procs = [p for p in group if p.poll() is None]
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
            end = time.monotonic() + 20
            for p in procs:
                try:
                    p.wait(max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
