"""``interq up``: Redis (if none answers), the simulator (if no GEMINI_API_KEY),
the API and N workers, supervised by ``jobs.dev.harness.Stack``: a child that
exits by itself is restarted with the same command, env and ports.

What to run is decided by ``plan_up`` from the same ``Settings`` the children
read (the environment *and* ``./.env``), so the upstream ``up`` picks is the
one the workers use, and a real key never reaches the simulator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from jobs.dev.harness import BACKENDS, Proc, Stack
from jobs.settings import Settings

SIM_PORT = 8090
API_PORT = 8000
REDIS_PORT = 6379
STOP_GRACE_S = 70.0  # workers drain for up to INTERQ_STEP_TIMEOUT_S (60 s)
KEY_VARS = ("GEMINI_API_KEY", "INTERQ_GEMINI_API_KEY")


@dataclass
class UpPlan:
    """What ``interq up`` starts, and the environment of the API and workers."""

    start_redis: bool
    simulator: bool
    env: dict[str, str]
    metrics_base: int  # worker i serves /metrics on metrics_base + i (0: none)
    notes: list[str] = field(default_factory=list)
    redis_port: int = REDIS_PORT  # where a Redis it starts listens

    def metrics_port(self, i: int) -> int:
        return self.metrics_base + i if self.metrics_base else 0


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def webhook_note(cfg: Settings) -> str:
    """Which webhook destinations the service will call, in words."""
    if cfg.webhook_allow_private:
        return (
            "webhooks to ANY address are allowed, private ones included (loopback, "
            "10/8, 172.16/12, 192.168/16, link-local, CGNAT...): INTERQ_WEBHOOK_ALLOW_PRIVATE=true"
        )
    nets = ", ".join(cfg.webhook_allowed_networks)
    extra = f" and to {nets} (INTERQ_WEBHOOK_ALLOWED_NETWORKS)" if nets else ""
    return f"webhooks go to public addresses only{extra}"


def plan_up(
    cfg: Settings,
    environ: Mapping[str, str],
    *,
    sim_port: int,
    redis_answers: bool,
    redis_port: int = REDIS_PORT,
) -> UpPlan:
    """Decide from ``cfg`` (read from the environment and ``.env``, as the
    children read it) what to start and with which environment."""
    env = dict(environ)
    notes: list[str] = []
    start_redis = False
    if cfg.redis_url is None and not cfg.redis_sentinels:
        start_redis = not redis_answers
        if redis_answers:
            notes.append(f"using the Redis already answering on localhost:{redis_port}")
        env["INTERQ_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    simulator = cfg.gemini_api_key is None or not cfg.gemini_api_key.get_secret_value()
    if simulator:
        for var in KEY_VARS:  # an empty one: the workers must send none at all
            env.pop(var, None)
        env["INTERQ_UPSTREAM_URL"] = f"http://127.0.0.1:{sim_port}"
        if "webhook_allow_private" not in cfg.model_fields_set:
            env["INTERQ_WEBHOOK_ALLOW_PRIVATE"] = "true"
            cfg = cfg.model_copy(update={"webhook_allow_private": True})
        notes.append(
            "NO GEMINI_API_KEY: running against the built-in SIMULATOR, not the real API.\n"
            f"Upstream = http://127.0.0.1:{sim_port}; {webhook_note(cfg)}."
        )
    else:
        notes.append(f"upstream = {cfg.upstream_url} (GEMINI_API_KEY set); {webhook_note(cfg)}.")
    return UpPlan(start_redis, simulator, env, cfg.worker_metrics_port, notes, redis_port)


def banner(msg: str) -> None:
    line = "=" * max(len(x) for x in msg.splitlines())
    typer.secho(f"{line}\n{msg}\n{line}", fg=typer.colors.YELLOW, bold=True, err=True)


def say(msg: str, color: str = typer.colors.GREEN) -> None:
    typer.secho(msg, fg=color, err=True)


def up(
    port: Annotated[int, typer.Option(help="API port")] = API_PORT,
    sim_port: Annotated[int, typer.Option(help="simulator port")] = SIM_PORT,
    workers: Annotated[int, typer.Option(help="worker processes", min=1)] = 1,
    redis_port: Annotated[
        int, typer.Option(help="port of the Redis to use or start (no INTERQ_REDIS_URL)")
    ] = REDIS_PORT,
) -> None:
    """Start everything a local service needs; Ctrl-C stops it all cleanly."""
    import os
    import shutil

    plan = plan_up(
        Settings(),
        os.environ,
        sim_port=sim_port,
        redis_answers=answers("127.0.0.1", redis_port),
        redis_port=redis_port,
    )
    if plan.start_redis and shutil.which("redis-server") is None:
        say(f"no Redis on localhost:{redis_port} and no redis-server binary", typer.colors.RED)
        say("(apt-get install redis-server)", typer.colors.RED)
        raise typer.Exit(1)
    for note in plan.notes:
        (banner if plan.simulator and "SIMULATOR" in note else say)(note)
    stack = Stack(Path("data"), base=plan.env, log_dir=None, cwd=Path.cwd(), keep=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        start_all(stack, plan, port=port, sim_port=sim_port, workers=workers)
        say(f"interq is up: http://127.0.0.1:{port}/docs  (Ctrl-C to stop)")
        supervise(stack, stopping)
    finally:
        say("stopping...", typer.colors.WHITE)
        stop_all(stack, grace=STOP_GRACE_S)
        say("stopped", typer.colors.WHITE)


def start_all(stack: Stack, plan: UpPlan, *, port: int, sim_port: int, workers: int) -> None:
    if plan.start_redis:
        data = Path("data/redis").resolve()
        stack.start_redis(port=plan.redis_port, aof=True, data_dir=data)
        started(stack, "redis", f"append-only, data in {data}")
    if plan.simulator:
        stack.start_simulator(port=sim_port)
        started(stack, "simulator", stack.sim_url)
    stack.start_api(port=port)
    started(stack, "api", stack.api_url)
    for i in range(workers):
        mport = plan.metrics_port(i)
        stack.start_worker(f"worker-{i}", metrics_port=mport)
        started(stack, f"worker-{i}", f"metrics on :{mport}" if mport else "no metrics port")


def started(stack: Stack, name: str, what: str = "") -> None:
    say(f"started {name} pid={stack.proc(name).pid}  {what}".rstrip())


def supervise(stack: Stack, stopping: threading.Event, every_s: float = 0.5) -> None:
    """Restart any child that exited by itself, until ``stopping`` is set."""
    while not stopping.wait(every_s):
        for p in stack.procs.values():  # what an exited child left running goes too
            if not p.held and p.popen is not None and not p.alive:
                signal_group(p, signal.SIGKILL)
        for proc, code in stack.supervise():
            say(f"{proc.name} exited ({code}); restarted pid={proc.pid}", typer.colors.RED)


def signal_group(p: Proc, sig: int) -> bool:
    """Send ``sig`` to ``p``'s process group (each child leads its own session,
    so the group is the child and whatever it started); False if none is left."""
    if p.popen is None:
        return False
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: still there
        return True
    return True


def stop_all(stack: Stack, grace: float) -> None:
    """Stop in ``Stack.stop``'s order (the API and workers, which drain, then the
    simulator and Redis), but signal each child's whole process group: SIGTERM,
    wait up to ``grace`` for the child to exit and its group to empty, then
    SIGKILL what is left, so nothing a child started outlives ``up``."""
    front = [p for p in stack.procs.values() if p.name not in BACKENDS]
    back = [p for p in stack.procs.values() if p.name in BACKENDS]
    for group in (front, back):
        for p in group:
            p.held = True  # the supervisor leaves it down
            signal_group(p, signal.SIGTERM)
        end = time.monotonic() + grace
        for p in group:
            if not drained(p, end) and signal_group(p, signal.SIGKILL) and p.popen:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(10)


def drained(p: Proc, end: float) -> bool:
    """Whether ``p`` exited and its process group emptied before ``end``."""
    while p.popen is not None:
        # poll() reaps the child: a zombie leader would keep its group there
        if p.popen.poll() is not None and not signal_group(p, 0):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)  # polling the group, bounded by ``end``
    return True
