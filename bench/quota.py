"""Quota benchmark: a 10,000-line NDJSON batch against a 1,200 requests/minute
create quota, interq against the naive way (every create fired at once, plain
exponential backoff on 429, a fixed-interval poll).

Time-scaled so it runs in minutes: with --scale 5 the quota window is 12 s
(1,200 creates per 12 s) and a job takes 2 s instead of 10 s. The ideal
makespan is jobs / quota * window + job duration.

    .venv/bin/python -m bench.quota [--jobs 10000] [--rpm 1200] [--scale 5]
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Annotated, Any

import httpx
import typer

from bench.common import cli_app, options, save, stack, table

MODEL = "sim-model"


def batch_body(jobs: int, duration: float) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"q-{i}",
                "interaction": {"model": MODEL, "input": f"item {i} [sim duration={duration}]"},
            }
        ).encode()
        + b"\n"
        for i in range(jobs)
    )


def run_interq(jobs: int, rpm: int, window: int, duration: float, workers: int) -> dict[str, Any]:
    scale = 60 / window  # everything time-scaled alike, the poll schedule too (as the
    # naive poller's 5 s interval is)
    env = {
        "INTERQ_LIMITS": json.dumps({MODEL: {"rpm": rpm}}),
        "INTERQ_RATE_WINDOW_S": str(window),
        "INTERQ_WORKER_MAX_JOBS": "500",
        "INTERQ_POLL_INITIAL_S": str(1.5 / scale),
        "INTERQ_POLL_MAX_S": str(30.0 / scale),
    }
    with stack(workers=workers, env=env) as st:
        st.sim_config(quota_rpm=rpm, quota_window_s=float(window), duration_s=duration)
        body = batch_body(jobs, duration)
        with httpx.Client(base_url=st.api_url, timeout=120) as c:
            t0 = time.monotonic()
            r = c.post(
                "/v1/batches", content=body, headers={"content-type": "application/x-ndjson"}
            )
            r.raise_for_status()
            accepted = time.monotonic() - t0
            bid = r.json()["id"]
            while True:
                b = c.get(f"/v1/batches/{bid}").json()
                if b["status"] != "in_progress":
                    break
                time.sleep(0.2)
            makespan = time.monotonic() - t0
        stats = st.sim_stats()
    return {
        "makespan_s": makespan,
        "intake_s": accepted,
        "completed": b["counts"]["completed"],
        "creates": stats["creates"],
        "status_429": stats["status_429"],
    }


async def naive(jobs: int, sim_url: str, poll_s: float, backoff_s: float) -> dict[str, Any]:
    """What a script does without interq: create everything now, back off on 429."""
    done = 0
    # a semaphore in front of the pool: httpx's own wait queue is quadratic in waiters
    gate = asyncio.Semaphore(400)
    async with httpx.AsyncClient(
        base_url=sim_url, timeout=60, limits=httpx.Limits(max_connections=400)
    ) as c:

        async def call(method: str, url: str, **kw: Any) -> httpx.Response:
            # a dropped or refused connection under load is retried, as any
            # script would: the baseline must finish, not crash
            for attempt in range(20):
                try:
                    async with gate:
                        return await c.request(method, url, **kw)
                except httpx.TransportError:
                    await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
            raise RuntimeError(f"{method} {url}: 20 transport errors in a row")

        async def one(i: int, duration: float) -> None:
            nonlocal done
            delay = backoff_s
            body = {
                "model": MODEL,
                "input": f"item {i} [sim duration={duration}]",
                "background": True,
            }
            while True:
                r = await call("POST", "/v1beta/interactions", json=body)
                if r.status_code == 200:
                    break
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 30 * backoff_s)
            iid = r.json()["id"]
            while True:
                await asyncio.sleep(poll_s)
                g = await call("GET", f"/v1beta/interactions/{iid}")
                if g.status_code == 200 and g.json()["status"] == "completed":
                    done += 1
                    return

        t0 = time.monotonic()
        await asyncio.gather(*(one(i, DURATION) for i in range(jobs)))
        return {"makespan_s": time.monotonic() - t0, "completed": done}


DURATION = 2.0


def run_naive(jobs: int, rpm: int, window: int, duration: float, scale: float) -> dict[str, Any]:
    with stack(workers=0, api=False) as st:
        st.sim_config(quota_rpm=rpm, quota_window_s=float(window), duration_s=duration)
        res = asyncio.run(naive(jobs, st.sim_url, poll_s=5.0 / scale, backoff_s=1.0 / scale))
        stats = st.sim_stats()
    return {**res, "creates": stats["creates"], "status_429": stats["status_429"]}


Opt = typer.Option


def command(
    ctx: typer.Context,
    jobs: Annotated[int, Opt()] = 10_000,
    rpm: Annotated[int, Opt(help="creates per (scaled) minute")] = 1200,
    scale: Annotated[int, Opt(help="time compression (60 must divide by it)")] = 5,
    job_s: Annotated[float, Opt(help="job duration before scaling")] = 10.0,
    workers: Annotated[int, Opt()] = 2,
    skip_naive: Annotated[bool, Opt("--skip-naive")] = False,
    quick: Annotated[bool, Opt("--quick", help="1,000 jobs: a smoke run")] = False,
) -> None:
    global DURATION
    a = options(ctx)
    if a.quick:
        a.jobs = 1000
    window = 60 // a.scale
    DURATION = a.job_s / a.scale
    ideal = a.jobs / a.rpm * window + DURATION
    print(
        f"{a.jobs} jobs, quota {a.rpm} creates per {window} s (x{a.scale} time scale), "
        f"job {DURATION:.1f} s, ideal makespan {ideal:.1f} s",
        flush=True,
    )
    runs = {"interq": run_interq(a.jobs, a.rpm, window, DURATION, a.workers)}
    print(f"interq: {runs['interq']}", flush=True)
    if not a.skip_naive:
        runs["naive"] = run_naive(a.jobs, a.rpm, window, DURATION, a.scale)
        print(f"naive: {runs['naive']}", flush=True)
    rows = [("run", "makespan s", "x ideal", "completed", "creates", "429s", "429 % creates")]
    for name, r in runs.items():
        r["x_ideal"] = r["makespan_s"] / ideal
        r["pct_429"] = 100.0 * r["status_429"] / max(1, r["creates"])
        rows.append(
            (
                name,
                f"{r['makespan_s']:.1f}",
                f"{r['x_ideal']:.3f}",
                str(r["completed"]),
                str(r["creates"]),
                str(r["status_429"]),
                f"{r['pct_429']:.2f}",
            )
        )
    print(table(rows))
    path = save("quota", {"args": vars(a), "ideal_s": ideal, "window_s": window, "runs": runs})
    print(f"written {path.relative_to(path.parent.parent.parent)}")


main = cli_app(command, "python -m bench.quota", __doc__)


if __name__ == "__main__":
    sys.exit(main())
