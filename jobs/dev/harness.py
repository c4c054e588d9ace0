"""One process harness: redis-server, the simulator, the API and workers as
real subprocesses on loopback, each started, waited for (with a deadline),
killed, restarted and stopped the same way. Used by the tests, the benchmarks,
the chaos run and ``interq up``.

    with Stack(settings={"poll_initial_s": 0.2}) as st:
        st.start_redis(aof=True)          # PING answers
        st.start_simulator()              # /_sim/stats answers
        st.start_api()                    # /healthz answers
        st.start_worker("worker-0")       # its /metrics says interq_worker_up 1
        st.kill("worker-0")               # SIGKILL (or sig=signal.SIGTERM)
        st.restart("worker-0")            # same command, env and metrics port
        st.kill("redis"); st.restart("redis")   # same port, same append-only file
        st.exits, st.restarts("redis")    # what was killed / exited, how often
    # stop(): workers and the API first (SIGTERM, then SIGKILL), then the rest

Every service process gets its environment from ``env_for`` (one builder of
``INTERQ_*`` variables from Settings or overrides). Logs go to
``<workdir>/logs/<name>.log`` (``<name>.<n>.log`` for the n-th restart), or to
this process's own stdout/stderr with ``log_dir=None``. ``Proc``, ``Exit``,
the command lines and the readiness probes live in ``jobs.dev.procs``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from jobs.dev.envs import base_env, env_for
from jobs.dev.procs import (
    Exit,
    Proc,
    fill_ballast,
    free_port,
    http_ready,
    interq_cmd,
    redis_ready,
    redis_server_cmd,
    worker_ready,
)

__all__ = [
    "ROOT",
    "Exit",
    "Proc",
    "Stack",
    "base_env",
    "env_for",
    "free_port",
    "redis_ready",
    "redis_server_cmd",
]

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0
BACKENDS = ("redis", "simulator")  # stopped last, after what talks to them


class Stack:
    """The service's processes, by name. ``settings`` (Settings or field
    overrides) and ``extra_env`` (raw variables) shape every service env; the
    URLs of a Redis and a simulator this stack starts are added to it.
    ``base`` replaces the starting environment (default: ``base_env()`` plus
    loopback defaults: results under the workdir, private webhooks allowed)."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        settings: Any = None,
        extra_env: Mapping[str, str] | None = None,
        base: Mapping[str, str] | None = None,
        log_dir: str | Path | bool | None = True,
        cwd: str | Path = ROOT,
        ready_timeout: float = READY_TIMEOUT_S,
        keep: bool = False,
    ) -> None:
        self._owned = workdir is None and not keep
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="interq-stack-")).resolve()
        if log_dir is True:
            log_dir = self.workdir / "logs"
        self.log_dir = Path(log_dir) if log_dir else None
        self.cwd = Path(cwd)
        self.ready_timeout = ready_timeout
        defaults = {
            "INTERQ_RESULTS_URL": f"file://{self.workdir / 'results'}",
            "INTERQ_WEBHOOK_ALLOW_PRIVATE": "true",
            "INTERQ_WORKER_METRICS_PORT": "0",
        }
        self.env: dict[str, str] = dict(base) if base is not None else {**base_env(), **defaults}
        self.env.update(env_for(settings, base={}))
        self.env.update(extra_env or {})
        self.procs: dict[str, Proc] = {}
        self.exits: list[Exit] = []  # every kill and every exit on its own, in order

    # -- urls
    @property
    def redis_url(self) -> str:
        return self.env.get("INTERQ_REDIS_URL", "")

    @property
    def sim_url(self) -> str:
        p = self.procs.get("simulator")
        return p.url if p else ""

    @property
    def api_url(self) -> str:
        p = self.procs.get("api")
        return p.url if p else ""

    def proc(self, name: str) -> Proc:
        return self.procs[name]

    def logs(self) -> list[Path]:
        return [log for p in self.procs.values() for log in p.logs]

    def restarts(self, name: str) -> int:
        """How often ``name`` was started again (0: still its first run)."""
        p = self.procs.get(name)
        return max(0, p.starts - 1) if p else 0

    # -- starting
    def add(
        self,
        name: str,
        cmd: list[str],
        env: Mapping[str, str] | None = None,
        *,
        ready: Callable[[Proc], bool] | None = None,
        url: str = "",
        port: int = 0,
        wait: bool = True,
    ) -> Proc:
        """Start any command as a supervised child named ``name``."""
        if name in self.procs and self.procs[name].alive:
            raise RuntimeError(f"{name} is already running")
        p = Proc(name, list(cmd), dict(self.env if env is None else env), ready, url, port)
        self.procs[name] = p
        self._launch(p, wait=wait)
        return p

    def start_redis(
        self,
        *,
        port: int | None = None,
        aof: bool = False,
        fsync_always: bool = False,
        name: str = "redis",
        data_dir: str | Path | None = None,
    ) -> str:
        """A redis-server (append-only with ``aof``) on a free port; returns its
        URL and points every service process started afterwards at it."""
        port = port or free_port()
        data = Path(data_dir or self.workdir / name)
        data.mkdir(parents=True, exist_ok=True)
        cmd = redis_server_cmd(port, str(data), aof=aof, fsync_always=fsync_always)
        url = f"redis://127.0.0.1:{port}/0"
        self.add(name, cmd, base_env(), ready=redis_ready, url=url, port=port)
        self.env["INTERQ_REDIS_URL"] = url
        return url

    def fill_ballast(self, keys: int, name: str = "redis") -> None:
        """``keys`` keys of other data in Redis ``name``, compacted into its
        append-only file: a restart then has a real load to do (LOADING)."""
        fill_ballast(self.procs[name].port, keys)

    def start_simulator(self, *, port: int | None = None, **sim_env: str) -> str:
        """The simulator (``INTERQ_SIM_*`` in ``sim_env``); it never sees a key.
        Every service process started afterwards uses it as the upstream."""
        port = port or free_port()
        env = {**base_env(self.env), **sim_env}
        url = f"http://127.0.0.1:{port}"
        cmd = interq_cmd("simulator", "--port", str(port))
        self.add("simulator", cmd, env, ready=http_ready("/_sim/stats"), url=url, port=port)
        self.env["INTERQ_UPSTREAM_URL"] = url
        return url

    def start_api(self, *, port: int | None = None, name: str = "api", **env: str) -> str:
        """``interq api`` on a free port; ready when /healthz answers."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = interq_cmd("api", "--port", str(port))
        full = {**self.env, **env}
        self.add(name, cmd, full, ready=http_ready("/healthz"), url=url, port=port)
        return url

    def start_worker(
        self,
        name: str = "worker",
        *,
        metrics_port: int | None = None,
        wait: bool = True,
        **env: str,
    ) -> Proc:
        """``interq worker`` with its own metrics port (None: a free one; 0: no
        metrics, and no waiting), kept across restarts; ready when its /metrics
        says interq_worker_up 1."""
        port = free_port() if metrics_port is None else metrics_port
        full = {**self.env, **env, "INTERQ_WORKER_METRICS_PORT": str(port)}
        url = f"http://127.0.0.1:{port}/metrics" if port else ""
        ready = worker_ready if port else None
        cmd = interq_cmd("worker")
        return self.add(name, cmd, full, ready=ready, url=url, port=port, wait=wait)

    # -- stopping and restarting
    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60.0) -> int | None:
        """Signal one child and wait for it to exit; returns its exit code. It
        stays down (``supervise`` leaves it) until ``restart``."""
        p = self.procs[name]
        p.held = True
        if p.popen is None:
            return None
        was_alive = p.alive
        if was_alive:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(sig)
        try:
            p.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(10)
        if was_alive:
            self.exits.append(Exit.of(p, killed=True))
        return p.returncode

    def restart(self, name: str, sig: int = signal.SIGKILL, *, wait: bool = True) -> Proc:
        """Stop ``name`` if it runs (with ``sig``), then start it again: same
        command, env and ports."""
        p = self.procs[name]
        if p.alive:
            self.kill(name, sig)
        self._launch(p, wait=wait)
        return p

    def supervise(self, wait: bool = False) -> list[tuple[Proc, int | None]]:
        """Restart every child that exited by itself (not ``kill``-ed); returns
        each with the exit code it ended with (and notes it in ``exits``)."""
        exited = [p for p in self.procs.values() if not p.held and p.popen and not p.alive]
        out = [(p, p.returncode) for p in exited]
        self.exits += [Exit.of(p, killed=False) for p in exited]
        for p in exited:
            self._launch(p, wait=wait)
        return out

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the workers and the API (they drain), then the simulator and
        Redis; SIGKILL whatever is still there after ``grace``."""
        front = [p for p in self.procs.values() if p.name not in BACKENDS]
        back = [p for p in self.procs.values() if p.name in BACKENDS]
        for group in (front, back):
            for p in group:
                p.held = True
                if p.alive and p.popen is not None:
                    with contextlib.suppress(ProcessLookupError):
                        p.popen.terminate()
            end = time.monotonic() + grace
            for p in group:
                if p.popen is None:
                    continue
                try:
                    p.popen.wait(max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait(10)
        if self._owned:  # a temporary workdir (pass workdir or keep=True to keep the logs)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- internals
    def _launch(self, p: Proc, *, wait: bool) -> None:
        p.starts += 1
        p.held = False
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            suffix = "" if p.starts == 1 else f".{p.starts}"
            path = self.log_dir / f"{p.name}{suffix}.log"
            p.logs.append(path)
            out = path.open("ab")
        try:
            p.popen = subprocess.Popen(  # noqa: S603 - our own commands
                p.cmd,
                cwd=self.cwd,
                env=p.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,  # a Ctrl-C reaches only us; we stop them in order
            )
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        if wait and p.ready is not None:
            self.wait_ready(p)

    def wait_ready(self, p: Proc, timeout: float | None = None) -> None:
        """Poll ``p``'s readiness check until it passes; raise if the process
        exits first or the deadline passes."""
        end = time.monotonic() + (timeout or self.ready_timeout)
        while True:
            if not p.alive:
                raise RuntimeError(
                    f"{p.name} exited ({p.returncode}) before it was ready\n{p.log_tail()}"
                )
            if p.ready is None or p.ready(p):
                return
            if time.monotonic() > end:
                raise RuntimeError(f"{p.name} was not ready in time\n{p.log_tail()}")
            time.sleep(0.05)  # polling a readiness probe, not synchronising on a guess
