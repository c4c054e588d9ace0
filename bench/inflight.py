"""In-flight benchmark: 10,000 interactions running upstream at once, watched by ONE
worker process, against a plain arq job that sleeps in a loop.

Workload: ``--jobs`` interactions, each ``[sim duration=X]`` with X uniform in
``--min-s``..``--max-s`` (seeded, the same list for every run).

interq: one ``--jobs``-line batch, one ``interq worker`` (shipped settings, except
``INTERQ_POLL_JITTER=0`` so that each poll's due time is known exactly), no budget
limits. The run ends when the batch is done or at ``--budget-s``.

Baselines: the obvious arq job, ``create; while True: await asyncio.sleep(5); GET``,
one arq job per interaction, one worker process, at ``max_jobs=10`` (a slot is
held for the whole interaction, so only 10 run at a time: the run is stopped at
``--budget-small-s`` and the completed fraction reported) and at
``max_jobs=--jobs`` (every interaction gets a slot). Its httpx client has 200
connections behind a semaphore (httpx's own pool queue degrades badly with
thousands of waiters).

Measures, all from the simulator's request log (``t`` = arrival time, the same
clock as ``time.time()`` in every process):

* completion time of an interaction = its create's arrival + its duration (the
  simulator starts its clock in the create handler, with no await in between);
* detection lag = when the job knew (interq: the job record's ``finished_at``,
  stamped just before the terminal transition; sleep loop: ``time.time()`` right
  after the GET that saw the terminal status) - completion time;
* poll lag = each GET's arrival - when that GET was due, where "due" is the
  previous GET's arrival (or the create's) + the interval asked for after it
  (interq: ``INTERQ_POLL_INITIAL_S`` x ``INTERQ_POLL_MULTIPLIER``^n capped at
  ``INTERQ_POLL_MAX_S``, jitter off; sleep loop: 5 s). interq's poll engine
  counts the next due time from when it sent the GET, so this is the lag as
  the upstream sees it (claim lag + the time to send), no sampling;
* peak upstream concurrency = most interactions running at the same moment
  (from create times and durations), to show the 10,000 really overlapped;
* worker memory = VmHWM (peak resident set) from /proc/<pid>/status, read just
  before the worker is stopped, and VmRSS sampled every second.

Target for interq: every job completes, 10,000 in flight on one worker under
150 MB RSS, poll lag p99 <= 1 s.

    .venv/bin/python -m bench.inflight [--jobs 10000] [--min-s 60] [--max-s 120] [--quick]
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Annotated, Any

import httpx
import typer

from bench.common import (
    MemSampler,
    Stack,
    cli_app,
    fmt,
    interactions_from_log,
    job_records,
    ndjson,
    pct,
    run_arq_worker,
    save,
    sim_requests,
    stack,
    start_arq_worker,
    sync_redis,
    table,
)
from jobs.storage.keys import Keys

KEYS = Keys()
MODEL = "sim-model"
SLEEP_QUEUE = "bench:sleep"
SEEN = "bench:seen"
TERMINAL = {"completed", "failed", "cancelled", "incomplete", "budget_exceeded"}
POLL_INITIAL_S, POLL_MAX_S, POLL_MULTIPLIER = 1.5, 30.0, 1.5  # interq's shipped schedule


def durations(n: int, lo: float, hi: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(lo, hi), 3) for _ in range(n)]


def interq_interval(n: int) -> float:
    """What ``steps.poll_interval`` returns after ``n`` polls, with jitter off."""
    return max(0.05, min(POLL_MAX_S, POLL_INITIAL_S * POLL_MULTIPLIER**n))


def poll_lags(created: float, gets: list[float], interval: Any) -> list[float]:
    times = [created, *gets]
    return [times[k] - (times[k - 1] + interval(k - 1)) for k in range(1, len(times))]


def peak_concurrency(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = best = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


def wait_progress(label: str, count: Any, total: int, budget: float) -> float:
    """Wait until ``count() >= total`` or ``budget`` s, printing progress every 15 s."""
    t0 = time.monotonic()
    last = t0
    while time.monotonic() - t0 < budget:
        n = count()
        if n >= total:
            break
        if time.monotonic() - last >= 15:
            print(f"  {label}: {n}/{total} after {time.monotonic() - t0:.0f} s", flush=True)
            last = time.monotonic()
        time.sleep(0.25)
    return time.monotonic() - t0


def summary(
    done: int,
    total: int,
    elapsed: float,
    detect: list[float],
    lags: list[float],
    gets: int,
    gets_done: int,
    peak: int,
    memory: dict[str, Any],
) -> dict[str, Any]:
    return {
        "jobs": total,
        "completed": done,
        "completed_fraction": done / total,
        "elapsed_s": elapsed,
        "detection_lag_s": {q: pct(detect, q) for q in (50, 95, 99)}
        | {"max": max(detect, default=None)},
        "poll_lag_s": {q: pct(lags, q) for q in (50, 95, 99)} | {"max": max(lags, default=None)},
        "polls_measured": len(lags),
        "gets": gets,
        "gets_per_completed_job": gets_done / max(1, done),
        "peak_upstream_in_flight": peak,
        "worker_memory": memory,
    }


# --------------------------------------------------------------------------- interq


def run_interq(durs: list[float], budget: float, log_level: str) -> dict[str, Any]:
    n = len(durs)
    env = {"INTERQ_POLL_JITTER": "0", "INTERQ_LOG_LEVEL": log_level}
    with stack(workers=0, env=env) as st:
        worker = st.start_worker("worker-interq")
        mem = MemSampler(worker.pid, every=1.0)
        r = sync_redis(st.redis_url)
        body = ndjson(
            {
                "custom_id": f"i-{i}",
                "interaction": {"model": MODEL, "input": f"item {i} [sim duration={d}]"},
            }
            for i, d in enumerate(durs)
        )
        resp = httpx.post(
            f"{st.api_url}/v1/batches",
            content=body,
            headers={"content-type": "application/x-ndjson"},
            timeout=300,
        )
        resp.raise_for_status()
        key = KEYS.batch(resp.json()["id"])
        elapsed = wait_progress("interq", lambda: int(r.hget(key, "done") or 0), n, budget)
        memory = mem.stop()
        st.stop_proc(worker)
        ids = [x.decode() for x in r.lrange(key + ":jobs", 0, -1)]
        records = job_records(r, ids)
        r.close()
        log = sim_requests(st)
    inter = interactions_from_log(log)
    detect: list[float] = []
    lags: list[float] = []
    spans = []
    gets = gets_done = 0
    done = 0
    for rec in inter.values():
        custom_id, status, finished_at = records.get(rec["job"]) or [None, None, None]
        if custom_id is None:
            continue
        d = durs[int(custom_id.split("-")[1])]
        spans.append((rec["created"], rec["created"] + d))
        lags += poll_lags(rec["created"], rec["gets"], interq_interval)
        gets += len(rec["gets"])
        if status == "completed" and finished_at:
            done += 1
            gets_done += len(rec["gets"])
            detect.append(float(finished_at) - (rec["created"] + d))
    peak = peak_concurrency(spans)
    return summary(done, n, elapsed, detect, lags, gets, gets_done, peak, memory)


# --------------------------------------------------------------------------- sleep loop


async def sleep_loop(ctx: dict[str, Any], i: int, duration: float) -> None:
    """The naive job: create, then sleep and GET until the interaction ends."""
    c: httpx.AsyncClient = ctx["http"]
    gate: asyncio.Semaphore = ctx["gate"]
    body = {
        "model": MODEL,
        "input": f"item {i} [sim duration={duration}]",
        "background": True,
        "labels": {"interq_job": f"s-{i}"},
    }
    async with gate:
        r = await c.post(ctx["base"], json=body)
    r.raise_for_status()
    url = f"{ctx['base']}/{r.json()['id']}?stream=false"
    for _ in range(ctx["max_polls"]):
        await asyncio.sleep(ctx["interval"])
        async with gate:
            g = await c.get(url)
        if g.status_code == 200 and g.json()["status"] in TERMINAL:
            await ctx["redis"].hset(SEEN, str(i), f"{time.time():.4f}")
            return


def sleep_startup(sim_url: str, interval: float, max_polls: int) -> Any:
    async def startup(ctx: dict[str, Any]) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        ctx["http"] = httpx.AsyncClient(timeout=60, limits=limits)
        ctx["gate"] = asyncio.Semaphore(200)
        ctx["base"] = f"{sim_url}/v1beta/interactions"
        ctx["interval"], ctx["max_polls"] = interval, max_polls

    return startup


async def sleep_shutdown(ctx: dict[str, Any]) -> None:
    if "http" in ctx:
        await ctx["http"].aclose()


def enqueue_sleepers(st: Stack, durs: list[float]) -> None:
    from arq.constants import job_key_prefix
    from arq.jobs import serialize_job

    r = sync_redis(st.redis_url)
    now_ms = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for i, d in enumerate(durs):
        jid = f"sleep-{i}"
        payload = serialize_job("sleep_loop", (i, d), {}, None, now_ms)
        pipe.psetex(job_key_prefix + jid, 86_400_000, payload)
        pipe.zadd(SLEEP_QUEUE, {jid: now_ms + i})  # FIFO in list order
    pipe.execute()
    r.close()


def run_sleep(durs: list[float], max_jobs: int, interval: float, budget: float) -> dict[str, Any]:
    n = len(durs)
    with stack(workers=0, api=False) as st:
        enqueue_sleepers(st, durs)
        max_polls = int(max(durs) / interval) + 100
        cmd = [sys.executable, "-m", "bench.inflight", "--arq-worker", "--redis", st.redis_url]
        cmd += ["--sim", st.sim_url, "--max-jobs", str(max_jobs), "--interval", str(interval)]
        cmd += ["--max-polls", str(max_polls), "--job-timeout", str(budget + 60)]
        worker = start_arq_worker(st, f"worker-sleep-{max_jobs}", cmd, SLEEP_QUEUE)
        mem = MemSampler(worker.pid, every=1.0)
        r = sync_redis(st.redis_url)
        elapsed = wait_progress(f"sleep loop, max_jobs={max_jobs}", lambda: r.hlen(SEEN), n, budget)
        memory = mem.stop()
        seen = {int(k): float(v) for k, v in r.hgetall(SEEN).items()}
        r.close()
        st.stop_proc(worker)
        log = sim_requests(st)
    inter = interactions_from_log(log)
    detect: list[float] = []
    lags: list[float] = []
    spans = []
    gets = gets_done = 0
    for rec in inter.values():
        if not rec["job"]:
            continue
        i = int(rec["job"].split("-")[1])
        spans.append((rec["created"], rec["created"] + durs[i]))
        lags += poll_lags(rec["created"], rec["gets"], lambda _k: interval)
        gets += len(rec["gets"])
        if i in seen:
            gets_done += len(rec["gets"])
            detect.append(seen[i] - (rec["created"] + durs[i]))
    peak = peak_concurrency(spans)
    out = summary(len(seen), n, elapsed, detect, lags, gets, gets_done, peak, memory)
    out["max_jobs"] = max_jobs
    out["started"] = len(spans)
    return out


# --------------------------------------------------------------------------- main


Opt = typer.Option
QUICK = {"jobs": 300, "min_s": 2.0, "max_s": 4.0, "budget_s": 20.0, "budget_small_s": 8.0}


def command(
    ctx: typer.Context,
    jobs: Annotated[int, Opt()] = 10_000,
    min_s: Annotated[float, Opt(help="shortest interaction")] = 60.0,
    max_s: Annotated[float, Opt(help="longest interaction")] = 120.0,
    seed: Annotated[int, Opt()] = 1,
    budget_s: Annotated[float, Opt(help="interq and max_jobs=N runs")] = 200.0,
    budget_small_s: Annotated[float, Opt(help="the max_jobs=10 run")] = 100.0,
    small_max_jobs: Annotated[int, Opt()] = 10,
    interval: Annotated[float, Opt(help="the sleep loop's poll interval")] = 5.0,
    log_level: Annotated[str, Opt(help="interq worker log level (shipped: INFO)")] = "INFO",
    skip_baselines: Annotated[bool, Opt("--skip-baselines")] = False,
    quick: Annotated[bool, Opt("--quick", help="short smoke run")] = False,
    arq_worker: Annotated[bool, Opt("--arq-worker", hidden=True)] = False,
    redis: Annotated[str | None, Opt(hidden=True)] = None,
    sim: Annotated[str | None, Opt(hidden=True)] = None,
    max_jobs: Annotated[int | None, Opt(hidden=True)] = None,
    max_polls: Annotated[int | None, Opt(hidden=True)] = None,
    job_timeout: Annotated[float | None, Opt(hidden=True)] = None,
) -> None:
    a = dict(ctx.params)
    if arq_worker:
        startup = sleep_startup(str(sim), interval, int(max_polls or 0))
        queue, n, timeout = SLEEP_QUEUE, int(max_jobs or 0), float(job_timeout or 300)
        run_arq_worker([sleep_loop], str(redis), queue, n, 0.2, startup, sleep_shutdown, timeout)
        return
    if quick:
        a.update(QUICK)
    runs = run_all(a)
    ok = report(runs)
    path = save(
        "inflight-quick" if quick else "inflight",
        {"args": a, "runs": runs, "interq_target_met": ok},
    )
    print(f"written {path.relative_to(path.parent.parent.parent)}")


def run_all(a: dict[str, Any]) -> dict[str, dict[str, Any]]:
    durs = durations(a["jobs"], a["min_s"], a["max_s"], a["seed"])
    skip = a["skip_baselines"]
    worst = a["budget_s"] * (1 if skip else 2) + (0 if skip else a["budget_small_s"])
    print(
        f"{a['jobs']} interactions of {a['min_s']:g}-{a['max_s']:g} s; at most "
        f"~{worst / 60:.1f} min of runs plus set-up",
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    print("interq, one worker ...", flush=True)
    runs["interq"] = run_interq(durs, a["budget_s"], a["log_level"])
    if not skip:
        for m, budget in ((a["small_max_jobs"], a["budget_small_s"]), (a["jobs"], a["budget_s"])):
            print(f"arq sleep loop, max_jobs={m} ...", flush=True)
            runs[f"sleep_max_jobs_{m}"] = run_sleep(durs, m, a["interval"], budget)
    return runs


def report(runs: dict[str, dict[str, Any]]) -> bool:
    """Print the table and the verdict; True when interq met its target."""
    head = "run|completed|in s|peak in flight|detect lag p50/p99 s|poll lag p50/p99 s"
    rows = [(*head.split("|"), "GETs/job", "peak RSS MB")]
    for name, r in runs.items():
        label = (
            "interq, 1 worker" if name == "interq" else f"arq sleep loop, max_jobs={r['max_jobs']}"
        )
        rows.append(
            (
                label,
                f"{r['completed']}/{r['jobs']} ({100 * r['completed_fraction']:.1f} %)",
                fmt(r["elapsed_s"], 0),
                str(r["peak_upstream_in_flight"]),
                f"{fmt(r['detection_lag_s'][50], 2)} / {fmt(r['detection_lag_s'][99], 2)}",
                f"{fmt(r['poll_lag_s'][50], 2)} / {fmt(r['poll_lag_s'][99], 2)}",
                fmt(r["gets_per_completed_job"], 1),
                fmt(r["worker_memory"]["vm_hwm_mb"], 0),
            )
        )
    print(table(rows))
    iq = runs["interq"]
    ok = bool(
        iq["completed"] == iq["jobs"]
        and iq["worker_memory"]["vm_hwm_mb"] < 150
        and (iq["poll_lag_s"][99] or 0) <= 1.0
    )
    print(
        f"interq target (all complete, < 150 MB, poll lag p99 <= 1 s): {'met' if ok else 'NOT met'}"
    )
    return ok


main = cli_app(command, "python -m bench.inflight", __doc__)


if __name__ == "__main__":
    sys.exit(main())
