"""Polling benchmark: upstream GETs per job and completion-detection lag for a
long-tailed mix of interaction durations, three ways:

* interq polling: the shipped backoff (1.5 s, x1.5 per poll, capped at 30 s,
  +-20 % jitter);
* a fixed 5 s poller: the same interq machinery with
  ``INTERQ_POLL_INITIAL_S = INTERQ_POLL_MAX_S = 5 s``, multiplier 1, no jitter, so
  only the schedule differs;
* interq + upstream webhooks: the shipped backoff, plus ``INTERQ_PUBLIC_URL`` (the
  API) and ``INTERQ_UPSTREAM_WEBHOOK_SECRET``; the simulator, given the same
  secret, POSTs a signed event to the ``webhook_config.uris`` interq put in each
  create when the interaction ends, and the API moves that job's next poll to now.

Durations are log-uniform between ``--min-real-s`` (2 s) and ``--max-real-s``
(30 min): each decade as likely as the next (2-20 s, 20-200 s, 200-1800 s get
36 %, 36 %, 28 %). Time is compressed by ``--scale`` (30: 30 min runs 60 s) and
so is every interq interval the schedule depends on: ``INTERQ_POLL_INITIAL_S``,
``INTERQ_POLL_MAX_S``, the fixed poller's period and ``INTERQ_WORKER_POLL_DELAY_S``
(how often the worker looks for due steps). interq clamps a poll interval to at
least 0.05 s, so at --scale above 30 the first polls come later than scaled.
Lags are reported in real-equivalent seconds (measured x scale) and as measured;
fixed costs (an HTTP hop, a Redis write: milliseconds) are multiplied by the scale
too, so the real-equivalent figures overstate every variant's lag by about
``scale`` x a few ms.

Jobs arrive one ``POST /v1/jobs`` at a time, evenly over ``--arrival-s`` (all at
once would put the fixed poller's GET rate far beyond one worker on this box, and
measure the box). The same seeded list of durations is used in every run.

GETs per job: GETs per interaction in the simulator's request log. Detection lag:
the job record's ``finished_at`` - (its create's arrival at the simulator + its
duration); the simulator starts the interaction's clock in the create handler.

Target: interq's GETs per job <= half the fixed poller's, at an equal or better
p95 detection lag.

    .venv/bin/python -m bench.polling [--jobs 200] [--scale 30] [--arrival-s 60] [--quick]
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import secrets
import sys
import time
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import typer

from bench.common import (
    Stack,
    cli_app,
    fmt,
    free_port,
    interactions_from_log,
    job_records,
    options,
    pct,
    save,
    sim_requests,
    stack,
    sync_redis,
    table,
)

MODEL = "sim-model"
BUCKETS = ((0.0, 30.0, "< 30 s"), (30.0, 300.0, "30 s-5 min"), (300.0, math.inf, "> 5 min"))


def durations(n: int, lo: float, hi: float, seed: int) -> list[float]:
    """Log-uniform real durations in seconds."""
    rng = random.Random(seed)
    return [math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(n)]


async def submit(api: str, scaled: list[float], arrival_s: float) -> list[str]:
    """One POST /v1/jobs per job, evenly spaced over ``arrival_s``; returns job ids."""
    ids: list[str | None] = [None] * len(scaled)
    step = arrival_s / max(1, len(scaled))
    async with httpx.AsyncClient(base_url=api, timeout=30) as c:

        async def one(i: int, d: float) -> None:
            body = {
                "custom_id": f"p-{i}",
                "interaction": {"model": MODEL, "input": f"item {i} [sim duration={d:.4f}]"},
            }
            r = await c.post("/v1/jobs", json=body)
            r.raise_for_status()
            ids[i] = r.json()["id"]

        t0 = time.monotonic()
        tasks = []
        for i, d in enumerate(scaled):
            delay = t0 + i * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, d)))
        await asyncio.gather(*tasks)
    return [x for x in ids if x is not None]


def warm_up_sim_webhooks(st: Any) -> None:
    """Have the simulator send one webhook (to an interaction interq does not know:
    the API answers 204 and does nothing) so its first delivery's one-off start-up
    cost (httpx client, TLS context) is paid before the measurement."""
    body = {
        "model": MODEL,
        "input": "warm-up [sim duration=0]",
        "background": True,
        "webhook_config": {"uris": [f"{st.api_url}/v1/upstream/webhook"]},
    }
    httpx.post(f"{st.sim_url}/v1beta/interactions", json=body, timeout=10).raise_for_status()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if httpx.get(f"{st.sim_url}/_sim/webhooks", timeout=10).json():
            break
        time.sleep(0.1)
    st.sim_reset()


def drive(st: Stack, name: str, scaled: list[float], arrival_s: float, **env: str) -> Any:
    """One worker, the jobs submitted over ``arrival_s``, until all are completed
    (or out of time); returns (the job records, elapsed s)."""
    # metrics_port and wait given (their defaults), so that no key of **env can be
    # taken for them: env holds INTERQ_* names only
    worker = st.start_worker(f"worker-{name}", metrics_port=None, wait=True, **env)
    r = sync_redis(st.redis_url)
    t0 = time.monotonic()
    ids = asyncio.run(submit(st.api_url, scaled, arrival_s))
    budget = arrival_s + max(scaled) + 30.0
    while time.monotonic() - t0 < budget:
        if int(r.hget("interq:counts", "completed") or 0) >= len(scaled):
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    st.stop_proc(worker)
    records = job_records(r, ids)
    r.close()
    return records, elapsed


def stats(rows: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    lags = [x["lag_s"] for x in rows if x["lag_s"] is not None]
    return {
        "jobs": len(rows),
        "completed": len(lags),
        "gets_per_job": sum(x["gets"] for x in rows) / max(1, len(rows)),
        "lag_measured_s": {q: pct(lags, q) for q in (50, 95, 99)},
        "lag_real_equiv_s": {
            q: (v * scale if v is not None else None)
            for q, v in ((q, pct(lags, q)) for q in (50, 95, 99))
        },
    }


def per_job_figures(
    log: list[dict[str, Any]], records: dict[str, Any], real: list[float], scale: float
) -> list[dict[str, Any]]:
    """Per job: its real duration, GETs and detection lag (measured s)."""
    per_job: list[dict[str, Any]] = []
    for rec in interactions_from_log(log).values():
        custom_id, status, finished_at = records.get(rec["job"]) or [None, None, None]
        if custom_id is None:
            continue
        i = int(custom_id.split("-")[1])
        lag = (
            float(finished_at) - (rec["created"] + real[i] / scale)
            if status == "completed" and finished_at
            else None
        )
        per_job.append({"real_s": real[i], "gets": len(rec["gets"]), "lag_s": lag})
    return per_job


def run(
    name: str,
    env: dict[str, str],
    real: list[float],
    scale: float,
    arrival_s: float,
    webhooks: bool,
) -> dict[str, Any]:
    scaled = [d / scale for d in real]
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    api_port = free_port()
    public = {"INTERQ_PUBLIC_URL": f"http://127.0.0.1:{api_port}"}
    if webhooks:  # the API checks the simulator's JWTs' audience: its own public URL
        env = {**env, **public, "INTERQ_UPSTREAM_WEBHOOK_SECRET": secret}
    with stack(workers=0, api_port=api_port, env=env) as st:
        worker_env = public if webhooks else {}
        if webhooks:
            st.sim_config(webhook_secret=secret)
            warm_up_sim_webhooks(st)
        records, elapsed = drive(st, name, scaled, arrival_s, **worker_env)
        log = sim_requests(st)
        hooks = httpx.get(f"{st.sim_url}/_sim/webhooks", timeout=60).json() if webhooks else []
    per_job = per_job_figures(log, records, real, scale)
    out = stats(per_job, scale)
    out["by_duration"] = {
        label: stats([x for x in per_job if lo <= x["real_s"] < hi], scale)
        for lo, hi, label in BUCKETS
    }
    out["per_job"] = per_job
    out["elapsed_s"] = elapsed
    out["env"] = env | worker_env
    if webhooks:
        out["webhooks_sent"] = sum(1 for h in hooks if h["attempt"] == 1)
        out["webhooks_ok"] = sum(1 for h in hooks if h["error"] is None)
    return out


Opt = typer.Option


def command(
    ctx: typer.Context,
    jobs: Annotated[int, Opt()] = 200,
    scale: Annotated[float, Opt(help="time compression")] = 30.0,
    arrival_s: Annotated[float, Opt(help="jobs arrive over this (wall)")] = 60.0,
    min_real_s: Annotated[float, Opt()] = 2.0,
    max_real_s: Annotated[float, Opt()] = 1800.0,
    fixed_s: Annotated[float, Opt(help="the fixed poller's period")] = 5.0,
    seed: Annotated[int, Opt()] = 7,
    log_level: Annotated[str, Opt(help="interq worker log level (shipped: INFO)")] = "INFO",
    quick: Annotated[bool, Opt("--quick", help="short smoke run")] = False,
) -> None:
    a = options(ctx)
    if a.quick:
        a.jobs, a.scale, a.arrival_s, a.max_real_s = 40, 60.0, 4.0, 300.0
    s = a.scale
    real = durations(a.jobs, a.min_real_s, a.max_real_s, a.seed)
    if 1.5 / s < 0.05:
        print(
            f"note: at x{s:g} interq's first poll (1.5 s -> {1.5 / s:.3f} s) is clamped to 0.05 s"
        )
    est = 3 * (a.arrival_s + a.max_real_s / s + 5)
    print(
        f"{a.jobs} jobs, {a.min_real_s:g} s-{a.max_real_s / 60:g} min log-uniform, x{s:g} time "
        f"compression, arriving over {a.arrival_s:g} s; ~{est / 60:.1f} min",
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    for key, label, env, hooks in variants(a):
        print(f"{label} ...", flush=True)
        runs[key] = run(key, env, real, s, a.arrival_s, hooks)
        runs[key]["label"] = label
    verdict = report(runs)
    path = save(
        "polling-quick" if a.quick else "polling",
        {"args": vars(a), "runs": runs, "target_met": verdict},
    )
    print(f"written {path.relative_to(path.parent.parent.parent)}")


def variants(a: SimpleNamespace) -> list[tuple[str, str, dict[str, str], bool]]:
    """(key, label, INTERQ_* env, upstream webhooks) of each run, intervals scaled."""
    s = a.scale
    common = {"INTERQ_WORKER_POLL_DELAY_S": f"{0.2 / s:.5f}", "INTERQ_LOG_LEVEL": a.log_level}
    runs: list[tuple[str, str, dict[str, str], bool]] = [
        (
            "interq",
            "interq polling",
            {"INTERQ_POLL_INITIAL_S": f"{1.5 / s:.5f}", "INTERQ_POLL_MAX_S": f"{30 / s:.5f}"},
            False,
        ),
        (
            "fixed",
            f"fixed {a.fixed_s:g} s poller",
            {
                "INTERQ_POLL_INITIAL_S": f"{a.fixed_s / s:.5f}",
                "INTERQ_POLL_MAX_S": f"{a.fixed_s / s:.5f}",
                "INTERQ_POLL_MULTIPLIER": "1",
                "INTERQ_POLL_JITTER": "0",
            },
            False,
        ),
        (
            "webhooks",
            "interq + upstream webhooks",
            {"INTERQ_POLL_INITIAL_S": f"{1.5 / s:.5f}", "INTERQ_POLL_MAX_S": f"{30 / s:.5f}"},
            True,
        ),
    ]
    return [(key, label, {**common, **env}, hooks) for key, label, env, hooks in runs]


def report(runs: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Print the tables and the verdicts; returns whether each target was met."""
    rows = [("run", "GETs/job", "x fixed", "lag p50 s", "lag p95 s", "(measured p95 s)", "done")]
    fixed_gets = runs["fixed"]["gets_per_job"]
    for r in runs.values():
        rows.append(
            (
                r["label"],
                fmt(r["gets_per_job"], 2),
                fmt(r["gets_per_job"] / fixed_gets, 2),
                fmt(r["lag_real_equiv_s"][50], 2),
                fmt(r["lag_real_equiv_s"][95], 2),
                fmt(r["lag_measured_s"][95], 3),
                f"{r['completed']}/{r['jobs']}",
            )
        )
    print(table(rows))
    brows = [("GETs/job, lag p95 s by duration", *(label for _, _, label in BUCKETS))]
    for r in runs.values():
        cells = []
        for _, _, label in BUCKETS:
            b = r["by_duration"][label]
            cells.append(
                f"{fmt(b['gets_per_job'], 1)}, {fmt(b['lag_real_equiv_s'][95], 1)}"
                if b["jobs"]
                else "-"
            )
        brows.append((r["label"], *cells))
    print(table(brows))
    fixed_p95 = runs["fixed"]["lag_real_equiv_s"][95] or math.inf
    verdict = {}
    for key in ("interq", "webhooks"):
        r = runs[key]
        verdict[key] = (
            r["gets_per_job"] <= fixed_gets / 2
            and (r["lag_real_equiv_s"][95] or math.inf) <= fixed_p95
        )
        print(
            f"{r['label']}: target (GETs/job <= half the fixed poller's at an equal or better "
            f"p95 lag) {'met' if verdict[key] else 'NOT met'}"
        )
    if "webhooks_sent" in runs["webhooks"]:
        w = runs["webhooks"]
        print(f"upstream webhooks: {w['webhooks_sent']} events, {w['webhooks_ok']} accepted")
    return verdict


main = cli_app(command, "python -m bench.polling", __doc__)


if __name__ == "__main__":
    sys.exit(main())
