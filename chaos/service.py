"""The chaos run's service on the shared harness (``jobs.dev.harness.Stack``): a
private redis-server (append-only, ``appendfsync always``, with ballast), the
simulator, the API and N workers; the chaos's own moves on it (a random worker
SIGKILLed and replaced, Redis stopped and started again) and its records."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.config import Options
from chaos.logs import exit_reason
from jobs.dev.harness import Exit, Stack

WORKER = "worker-"


def chaos_env(opts: Options) -> dict[str, str]:
    """Short timeouts and retries, so that the run's disruptions play out in minutes."""
    return {
        "PYTHONUNBUFFERED": "1",
        "INTERQ_STEP_TIMEOUT_S": str(opts.step_timeout_s),
        "INTERQ_UPSTREAM_TIMEOUT_S": "1",
        "INTERQ_CREATE_TIMEOUT_S": "1",
        "INTERQ_POLL_INITIAL_S": "0.5",
        "INTERQ_POLL_MAX_S": "2",
        "INTERQ_RETRY_INITIAL_S": "0.2",
        "INTERQ_RETRY_MAX_S": "2",
        "INTERQ_WORKER_POLL_DELAY_S": "0.1",
        "INTERQ_WEBHOOK_SCHEDULE_S": opts.webhook_schedule,
        "INTERQ_WEBHOOK_TIMEOUT_S": "2",
    }


@dataclass
class Service:
    """The run's processes (a ``Stack`` in ``tmp``, logs in ``tmp/logs``)."""

    opts: Options
    tmp: Path
    say: Callable[[str], None]
    st: Stack = field(init=False)
    t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.st = Stack(self.tmp, extra_env=chaos_env(self.opts))

    @property
    def redis_url(self) -> str:
        return self.st.redis_url

    @property
    def sim_url(self) -> str:
        return self.st.sim_url

    @property
    def api_url(self) -> str:
        return self.st.api_url

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def start(self) -> None:
        self.st.start_redis(aof=True, fsync_always=True)
        self.st.fill_ballast(self.opts.ballast_keys)
        self.st.start_simulator()
        self.st.start_api()
        for i in range(self.opts.workers):
            self.st.start_worker(f"{WORKER}{i}")

    # -- the chaos
    def stop_redis(self) -> None:
        self.st.kill("redis", signal.SIGTERM if self.opts.redis_stop == "term" else signal.SIGKILL)

    def start_redis(self) -> None:
        """Again on the same port and data; returns once PING answers (past LOADING)."""
        self.st.restart("redis")

    def kill_random_worker(self, rng: random.Random) -> None:
        alive = [n for n, p in self.st.procs.items() if n.startswith(WORKER) and p.alive]
        if not alive:
            return
        name = rng.choice(alive)
        self.st.kill(name)
        self.say(f"t={self.now():6.1f}s  SIGKILL {self.label(self.st.exits[-1])}; replacing it")
        self.st.restart(name, wait=False)  # Redis may be down: it gets ready by itself

    def supervise(self) -> None:
        """Restart a worker or the API that exited on its own (``self_exits``,
        ``api_exits``: failures); a simulator that exited ends the run."""
        for p, rc in self.st.supervise():
            if p.name == "simulator":
                raise RuntimeError(f"the simulator exited ({rc})")
            e = self.exit_of(p.name)
            why = exit_reason(e.log)[:160]
            self.say(f"t={self.now():6.1f}s  {self.label(e)} EXITED ({rc}: {why}); restarted")

    def close(self) -> None:
        """Workers and the API first (they drain on SIGTERM while Redis is up), then the rest."""
        self.st.stop(grace=20)

    # -- records
    def label(self, e: Exit) -> str:
        return f"{e.name}#{e.start}"

    def exit_of(self, name: str) -> Exit:
        return next(e for e in reversed(self.st.exits) if e.name == name)

    def record(self, e: Exit) -> dict[str, Any]:
        """A worker's exit as the summary has it: ``"worker": "<slot>-<run>"``."""
        slot = f"{e.name.removeprefix(WORKER)}-{e.start}"
        out: dict[str, Any] = {"t": round(e.at - self.t0, 2), "worker": slot}
        if not e.killed:
            out.update(returncode=e.returncode, reason=exit_reason(e.log))
        return out

    def worker_exits(self, killed: bool) -> list[dict[str, Any]]:
        return [
            self.record(e)
            for e in self.st.exits
            if e.name.startswith(WORKER) and e.killed == killed
        ]

    @property
    def kills(self) -> list[dict[str, Any]]:
        return self.worker_exits(killed=True)

    @property
    def self_exits(self) -> list[dict[str, Any]]:
        return self.worker_exits(killed=False)

    @property
    def api_exits(self) -> list[dict[str, Any]]:
        return [
            {"t": round(e.at - self.t0, 2), "returncode": e.returncode}
            for e in self.st.exits
            if e.name == "api" and not e.killed
        ]

    @property
    def redis_restarts(self) -> int:
        return self.st.restarts("redis")

    def logs(self) -> list[Path]:
        return self.st.logs()
