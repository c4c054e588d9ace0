"""The pieces of ``jobs.dev.harness`` below the ``Stack``: one supervised child
(``Proc``), a record of one that ended (``Exit``), the command lines, the
readiness probes, and filling a Redis with ballast. ``jobs.dev.harness``
re-exports the public names."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Exit",
    "Proc",
    "fill_ballast",
    "free_port",
    "http_ready",
    "interq_cmd",
    "redis_ready",
    "redis_server_cmd",
    "worker_ready",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Redis preallocates a stream's first node at this size (4096 by default): a job's
# change stream, a few entries, then costs ~0.8 KB of Redis instead of ~4.4 KB.
STREAM_NODE_MAX_BYTES = 512


def redis_server_cmd(
    port: int, data_dir: str, *, aof: bool, fsync_always: bool = False
) -> list[str]:
    """A loopback-only redis-server command line (no RDB snapshots; append-only
    file as asked; small stream nodes: ``STREAM_NODE_MAX_BYTES``)."""
    cmd = [shutil.which("redis-server") or "redis-server", "--port", str(port)]
    cmd += ["--bind", "127.0.0.1", "--dir", data_dir, "--save", ""]
    cmd += ["--appendonly", "yes" if aof else "no"]
    cmd += ["--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES)]
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


@dataclass
class Exit:
    """A running child that ended: ``kill``-ed (``killed``) or exited by itself
    (found by ``supervise``), in its ``start``-th run (1: the first)."""

    name: str
    start: int
    returncode: int | None
    killed: bool
    at: float  # time.monotonic()
    log: Path | None = None  # the log of the run that ended

    @classmethod
    def of(cls, p: Proc, *, killed: bool) -> Exit:
        log = p.logs[-1] if p.logs else None
        return cls(p.name, p.starts, p.returncode, killed, time.monotonic(), log)


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


def http_ready(path: str) -> Callable[[Proc], bool]:
    """A probe: ``GET <url><path>`` answers below 500."""

    def ready(p: Proc) -> bool:
        import httpx

        try:
            return httpx.get(p.url + path, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    return ready


def worker_ready(p: Proc) -> bool:
    """The worker's /metrics says interq_worker_up 1."""
    import httpx

    try:
        text = httpx.get(p.url, timeout=2).text
    except httpx.HTTPError:
        return False
    return any(line.startswith("interq_worker_up 1") for line in text.splitlines())


def fill_ballast(port: int, keys: int, *, batch: int = 10_000) -> None:
    """``keys`` hashes of a few hundred bytes of other data (``ballast:{i}``),
    compacted into the append-only file, so that a restart has a real load to
    do and clients meet Redis answering LOADING for a while."""
    import redis

    if keys <= 0:
        return
    client = redis.Redis(port=port)
    try:
        for start in range(0, keys, batch):
            with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(keys, start + batch)):
                    pipe.hset(f"ballast:{{{i}}}", mapping={"a": "x" * 200, "b": str(i)})
                pipe.execute()
        while True:  # compact it all into the base file (after any automatic rewrite)
            _rewrite_done(client)
            try:
                client.bgrewriteaof()  # type: ignore[no-untyped-call]
                break
            except redis.ResponseError as e:
                if "in progress" not in str(e):
                    raise
        _rewrite_done(client)
    finally:
        client.close()


def _rewrite_done(client: Any) -> None:
    """Until no append-only rewrite runs (Redis offers no event for it: polled)."""
    while client.info("persistence").get("aof_rewrite_in_progress"):
        time.sleep(0.1)
