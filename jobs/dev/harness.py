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
    # stop(): workers and the API first (SIGTERM, then SIGKILL), then the rest

Every service process gets its environment from ``env_for`` (one builder of
``INTERQ_*`` variables from Settings or overrides). Logs go to
``<workdir>/logs/<name>.log`` (``<name>.<n>.log`` for the n-th restart), or to
this process's own stdout/stderr with ``log_dir=None``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jobs.dev.envs import base_env, env_for

__all__ = ["ROOT", "Proc", "Stack", "base_env", "env_for", "free_port", "redis_server_cmd"]

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0
BACKENDS = ("redis", "simulator")  # stopped last, after what talks to them


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_cmd(
    port: int, data_dir: str, *, aof: bool, fsync_always: bool = False
) -> list[str]:
    """A loopback-only redis-server command line (no RDB snapshots; append-only
    file as asked)."""
    cmd = [shutil.which("redis-server") or "redis-server", "--port", str(port)]
    cmd += ["--bind", "127.0.0.1", "--dir", data_dir, "--save", ""]
    cmd += ["--appendonly", "yes" if aof else "no"]
    if fsync_always:
        cmd += ["--appendfsync", "always"]
    return cmd


def interq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *args]


@dataclass
class Proc:
    """One supervised child: how to start it, how to tell it is ready."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    ready: Callable[[Proc], bool] | None = None
    url: str = ""
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)
    held: bool = False  # stopped on purpose: the supervisor leaves it down

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, chars: int = 3000) -> str:
        if not self.logs:
            return ""
        with contextlib.suppress(OSError):
            return self.logs[-1].read_text(errors="replace")[-chars:]
        return ""


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

    def start_simulator(self, *, port: int | None = None, **sim_env: str) -> str:
        """The simulator (``INTERQ_SIM_*`` in ``sim_env``); it never sees a key.
        Every service process started afterwards uses it as the upstream."""
        port = port or free_port()
        env = {**base_env(self.env), **sim_env}
        url = f"http://127.0.0.1:{port}"
        cmd = interq_cmd("simulator", "--port", str(port))
        self.add("simulator", cmd, env, ready=_http_ready("/_sim/stats"), url=url, port=port)
        self.env["INTERQ_UPSTREAM_URL"] = url
        return url

    def start_api(self, *, port: int | None = None, name: str = "api", **env: str) -> str:
        """``interq api`` on a free port; ready when /healthz answers."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = interq_cmd("api", "--port", str(port))
        full = {**self.env, **env}
        self.add(name, cmd, full, ready=_http_ready("/healthz"), url=url, port=port)
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
        ready = _worker_ready if port else None
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
        if p.alive:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(sig)
        try:
            return p.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            return p.popen.wait(10)

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
        each with the exit code it ended with."""
        exited = [p for p in self.procs.values() if not p.held and p.popen and not p.alive]
        out = [(p, p.returncode) for p in exited]
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


def redis_ready(p: Proc, **conn: Any) -> bool:
    """A PING answered (``conn``: more client options, e.g. TLS ones)."""
    import redis

    client = redis.Redis(port=p.port, socket_connect_timeout=1, socket_timeout=2, **conn)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False
    finally:
        client.close()


def _http_ready(path: str) -> Callable[[Proc], bool]:
    def ready(p: Proc) -> bool:
        import httpx

        try:
            return httpx.get(p.url + path, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    return ready


def _worker_ready(p: Proc) -> bool:
    import httpx

    try:
        text = httpx.get(p.url, timeout=2).text
    except httpx.HTTPError:
        return False
    return any(line.startswith("interq_worker_up 1") for line in text.splitlines())
