"""Batch intake benchmark: what one big ``POST /v1/batches`` costs everyone else.

No worker runs (the jobs just queue). For each body:

* time to the 202;
* another client's Redis ``PING`` latency while the batch is written (a process
  of its own, one PING due every 5 ms, each timed from when it was due, so a
  stall counts for every probe it delays): a batch written as one Redis
  transaction holds every other client until it ends;
* ``GET /healthz`` latency on the API while it takes the batch (its event loop;
  one due every 50 ms, timed the same way);
* the API process's resident set (``/proc/<pid>/status``): before, the peak
  (VmHWM and 20 ms samples) and after (a few seconds after the 202).

Bodies: ``--lines`` NDJSON lines of about 150 bytes (the 50,000-line batch), and
``--big-mb`` MB of ``--lines`` lines padded to that size (RSS against the body).
Baseline in the same run: the PING and /healthz latency with no batch running.

    .venv/bin/python -m bench.batch_intake [--lines 50000] [--big-mb 200] [--quick]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from typing import Annotated, Any

import httpx
import typer

from bench.common import (
    MemSampler,
    cli_app,
    fmt,
    options,
    pct,
    proc_mem_mb,
    save,
    stack,
    sync_redis,
    table,
)

MODEL = "sim-model"
NDJSON = {"content-type": "application/x-ndjson"}
SETTLE_S = 3.0  # after the 202, before "after" RSS is read
# probes are due at this pace (open loop: no coordinated omission): PING, /healthz
PROBE_EVERY_S = {"ping": 0.005, "healthz": 0.05}


def body(n: int, size: int, tag: str) -> bytes:
    """``n`` NDJSON lines, padded so that the body is about ``size`` bytes."""
    pad = max(0, size // n - 120) if size else 0
    filler = "x" * pad
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{tag}-{i}",
                "interaction": {"model": MODEL, "input": f"item {i} {filler}[sim duration=1]"},
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def _probe_loop(kind: str, target: str, stop: Any, out: Any) -> None:
    """In a process of its own (no GIL shared with the bench): probe on
    schedule until ``stop`` is set, then send the (due, seconds) pairs."""
    if kind == "ping":
        r = sync_redis(target)
        probe = r.ping
    else:
        c = httpx.Client(base_url=target, timeout=600)

        def probe() -> Any:
            return c.get("/healthz")

    out.send("ready")
    every = PROBE_EVERY_S[kind]
    lat: list[tuple[float, float]] = []
    due = ended = time.monotonic()
    while not stop.is_set() and len(lat) < 2_000_000:
        woke = time.monotonic()
        if woke - due > every and ended <= due:  # the prober was not run: not the server
            due = woke
        probe()
        ended = time.monotonic()
        lat.append((due, ended - due))  # from when it was due: a stall counts
        due += every
        stop.wait(max(0.0, due - time.monotonic()))
    out.send(lat)


class Prober:
    """Probes on a schedule in a child process (a Redis PING, or GET /healthz),
    each timed; ``window()`` gives the latencies between two marks (monotonic
    clock, the same in every process)."""

    def __init__(self, kind: str, target: str) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_probe_loop, args=(kind, target, self._stop, send))
        self._proc.start()
        if self._recv.recv() != "ready":
            raise RuntimeError(f"the {kind} prober did not start")
        self.lat: list[tuple[float, float]] = []

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        ms = [d * 1000 for t, d in self.lat if t0 <= t < t1 or (t < t1 and t + d > t0)]
        return {
            "n": len(ms),
            "p50_ms": pct(ms, 50),
            "p99_ms": pct(ms, 99),
            "max_ms": max(ms, default=None),
        }

    def stop(self) -> None:
        self._stop.set()
        self.lat = self._recv.recv()
        self._proc.join(30)


def one_batch(api: str, pid: int, raw: bytes) -> dict[str, Any]:
    before = proc_mem_mb(pid)["rss_mb"]
    sampler = MemSampler(pid, every=0.02)
    with httpx.Client(base_url=api, timeout=600) as c:
        t0 = time.monotonic()
        r = c.post("/v1/batches", content=raw, headers=NDJSON)
        t1 = time.monotonic()
    r.raise_for_status()
    time.sleep(SETTLE_S)  # a bench, not a test: let the API settle before "after"
    mem = sampler.stop()
    return {
        "body_mb": len(raw) / 1e6,
        "lines": r.json()["total"],
        "time_to_202_s": t1 - t0,
        "window": (t0, t1),
        "rss_before_mb": before,
        "rss_peak_mb": max(mem["vm_hwm_mb"], mem["peak_rss_sampled_mb"]),
        "rss_after_mb": mem["final_rss_mb"],
    }


Opt = typer.Option


def command(
    ctx: typer.Context,
    lines: Annotated[int, Opt(help="NDJSON lines per batch")] = 50_000,
    big_mb: Annotated[int, Opt(help="size of the padded batch, MB (0: skip it)")] = 200,
    baseline_s: Annotated[float, Opt(help="PING baseline with no batch, seconds")] = 3.0,
    quick: Annotated[bool, Opt("--quick", help="short smoke run")] = False,
) -> None:
    a = options(ctx)
    if a.quick:
        a.lines, a.big_mb, a.baseline_s = 5_000, 20, 1.0
    small = body(a.lines, 0, "s")
    big = body(a.lines, a.big_mb * 1_000_000, "b") if a.big_mb else b""
    with stack(workers=0) as st:
        pid = st.proc("api").pid
        with httpx.Client(base_url=st.api_url, timeout=60) as c:  # warm-up
            c.post("/v1/batches", content=body(100, 0, "w"), headers=NDJSON).raise_for_status()
        pings, health = Prober("ping", st.redis_url), Prober("healthz", st.api_url)
        t0 = time.monotonic()
        time.sleep(a.baseline_s)
        base_window = (t0, time.monotonic())
        print(f"batch: {a.lines} lines, {len(small) / 1e6:.1f} MB ...", flush=True)
        runs = [one_batch(st.api_url, pid, small)]
        if big:
            print(f"batch: {a.lines} lines, {len(big) / 1e6:.1f} MB ...", flush=True)
            runs.append(one_batch(st.api_url, pid, big))
        pings.stop()
        health.stop()
    base = {"ping": pings.window(*base_window), "healthz": health.window(*base_window)}
    for r in runs:
        r["ping_during"] = pings.window(*r["window"])
        r["healthz_during"] = health.window(*r["window"])
    report(base, runs)
    path = save("batch_intake", {"args": vars(a), "baseline": base, "runs": runs})
    print(f"written {path}")


def report(base: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    rows: list[tuple[str, ...]] = [
        ("what", "to 202 s", "PING p50/p99/max ms", "/healthz p50/p99 ms", "RSS MB")
    ]
    p, h = base["ping"], base["healthz"]
    rows.append(
        (
            "no batch (baseline)",
            "-",
            f"{fmt(p['p50_ms'], 2)} / {fmt(p['p99_ms'], 2)} / {fmt(p['max_ms'], 1)}",
            f"{fmt(h['p50_ms'], 2)} / {fmt(h['p99_ms'], 2)}",
            "-",
        )
    )
    for r in runs:
        p, h = r["ping_during"], r["healthz_during"]
        rows.append(
            (
                f"{r['lines']:,} lines, {r['body_mb']:.1f} MB",
                fmt(r["time_to_202_s"], 2),
                f"{fmt(p['p50_ms'], 2)} / {fmt(p['p99_ms'], 2)} / {fmt(p['max_ms'], 1)}",
                f"{fmt(h['p50_ms'], 2)} / {fmt(h['p99_ms'], 2)}",
                f"{r['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f}",
            )
        )
    print(table(rows))
    print("RSS MB: before / peak / after (3 s after the 202)")


main = cli_app(command, "python -m bench.batch_intake", __doc__)


if __name__ == "__main__":
    sys.exit(main())
