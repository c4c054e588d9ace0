"""Watchers: N idle SSE connections on one API process, and one change fanned out.

Starts its own redis-server, simulator and API (``jobs.dev.harness``; no
worker: the job stays queued until the bench cancels it). Opens ``--watchers``
connections to ``GET /v1/jobs/{id}/events`` of one job with raw asyncio
sockets (no HTTP client library in the way), waits for each one's first event,
lets them idle for ``--idle`` seconds, then cancels the job (one change of
status) and times how long it takes to reach every watcher. Reports the API's
RSS and CPU and Redis's ``connected_clients`` (INFO) before, while idle and
after the streams ended, and the fan-out latency.

  .venv/bin/python -m bench.watchers            # 2,000 watchers, 20 s idle
  .venv/bin/python -m bench.watchers --quick    # 200 watchers, 3 s idle
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlparse

import httpx
import typer
from redis import Redis

from bench.common import cli_app, fmt, options, pct, proc_mem_mb, save, stack, table
from jobs.storage.keys import Keys

BODY = {"interaction": {"model": "sim-model", "input": "watch me"}}
OPEN_AT_ONCE = 100  # connections being opened at the same time


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime, stime (clock ticks)


def sample(pid: int, redis_url: str) -> dict[str, Any]:
    r = Redis.from_url(redis_url)
    # redis-py types every reply as Awaitable | Any (sync and asyncio clients alike);
    # this client is the sync one, so these are the replies themselves
    info = cast("dict[str, Any]", r.info("clients"))
    ((_, subscribers),) = cast("list[tuple[bytes, int]]", r.pubsub_numsub(Keys().changes_channel))
    r.close()
    return {
        **proc_mem_mb(pid),
        "cpu_s": cpu_s(pid),
        "redis_connected_clients": int(info["connected_clients"]) - 1,  # less this probe
        "changes_channel_subscribers": int(subscribers),
    }


class Watcher:
    """One SSE connection: opened, first event read, then the time at which
    the ``status`` event arrived."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.seen_at: float | None = None
        self.ready = asyncio.Event()

    async def open(self, host: str, port: int, path: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            self.reader, self.writer = await asyncio.open_connection(host, port)
            req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
            self.writer.write(req.encode())
            await self.writer.drain()
            buf = b""
            while b"event: job" not in buf:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise RuntimeError(f"stream closed before its first event: {buf[:200]!r}")
                buf += chunk
        self.ready.set()

    async def until_status(self) -> None:
        assert self.reader is not None
        buf = b""
        while b"event: status" not in buf:
            chunk = await self.reader.read(65536)
            if not chunk:
                return
            buf = buf[-64:] + chunk
        self.seen_at = time.monotonic()
        while await self.reader.read(65536):  # to the end of the stream
            pass

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run(api_url: str, n: int, idle_s: float, on_idle: Any) -> dict[str, Any]:
    u = urlparse(api_url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as c:
        job_id = (await c.post("/v1/jobs", json=BODY)).raise_for_status().json()["id"]
        gate = asyncio.Semaphore(OPEN_AT_ONCE)
        watchers = [Watcher() for _ in range(n)]
        t0 = time.monotonic()
        await asyncio.gather(
            *(w.open(host, port, f"/v1/jobs/{job_id}/events", gate) for w in watchers)
        )
        opened_s = time.monotonic() - t0
        readers = [asyncio.create_task(w.until_status()) for w in watchers]
        idle = await on_idle(idle_s)
        t1 = time.monotonic()
        (await c.post(f"/v1/jobs/{job_id}/cancel")).raise_for_status()
        await asyncio.wait_for(asyncio.gather(*readers), 120)
        lat = [(w.seen_at - t1) * 1000 for w in watchers if w.seen_at is not None]
        for w in watchers:
            w.close()
    return {
        "watchers": n,
        "open_all_s": opened_s,
        "reached": len(lat),
        "fanout_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat, default=None)},
        **idle,
    }


Opt = typer.Option


def command(
    ctx: typer.Context,
    watchers: Annotated[int, Opt(help="SSE connections on one job")] = 2000,
    idle: Annotated[float, Opt(help="seconds they stay idle before the change")] = 20.0,
    quick: Annotated[bool, Opt("--quick", help="short smoke run")] = False,
) -> None:
    a = options(ctx)
    if a.quick:
        a.watchers, a.idle = 200, 3.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * a.watchers + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the API inherits it
    with stack(workers=0) as st:
        pid = st.procs["api"].pid
        before = sample(pid, st.redis_url)

        async def on_idle(seconds: float) -> dict[str, Any]:
            start = sample(pid, st.redis_url)
            await asyncio.sleep(seconds)  # the bench's idle period, not a synchronisation
            end = sample(pid, st.redis_url)
            cpu = (end["cpu_s"] - start["cpu_s"]) / seconds * 100
            return {"idle": end, "idle_cpu_percent": cpu}

        print(f"{a.watchers} watchers on one job, {a.idle:g} s idle ...", flush=True)
        out = asyncio.run(run(st.api_url, a.watchers, a.idle, on_idle))
        with contextlib.suppress(Exception):
            httpx.get(f"{st.api_url}/healthz", timeout=10)
        after = sample(pid, st.redis_url)
    report(a, before, out, after)
    path = save(
        "watchers-quick" if a.quick else "watchers",
        {"args": vars(a), "before": before, **out, "after": after},
    )
    print(f"written {path.relative_to(path.parent.parent.parent)}")


def report(a: Any, before: dict[str, Any], out: dict[str, Any], after: dict[str, Any]) -> None:
    idle = out["idle"]
    rows = [("when", "API RSS MB", "Redis connected_clients", "subscribers of the channel")]
    for label, s in (("before", before), (f"{a.watchers} idle", idle), ("after", after)):
        rows.append(
            (
                label,
                fmt(s["rss_mb"]),
                str(s["redis_connected_clients"]),
                str(s["changes_channel_subscribers"]),
            )
        )
    print(table(rows))
    f = out["fanout_ms"]
    per = (idle["rss_mb"] - before["rss_mb"]) * 1024 / max(1, a.watchers)
    print(
        f"opened {out['watchers']} in {out['open_all_s']:.1f} s; idle API CPU "
        f"{out['idle_cpu_percent']:.1f} %; {per:.1f} KB RSS per watcher; one change reached "
        f"{out['reached']}/{out['watchers']}: p50 {fmt(f['p50'])} ms, p99 {fmt(f['p99'])} ms, "
        f"max {fmt(f['max'])} ms"
    )


main = cli_app(command, "python -m bench.watchers", __doc__)


if __name__ == "__main__":
    sys.exit(main())
