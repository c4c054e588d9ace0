"""Intake benchmark: how fast the API accepts work, with no worker running (jobs
just queue).

* ``POST /v1/jobs`` by ``wrk`` (``bench/wrk.py``, ``bench/wrk_post_job.lua``):
  one wrk thread at each ``--wrk-conns`` connection count for ``--wrk-seconds``,
  a realistic body (model, a ~330-character prompt, generation_config, a
  webhook with its secret, metadata, custom_id, ``timeout_s``), an
  ``Idempotency-Key`` and an API key on every request. req/s, p50, p99 and every
  non-2xx answer per count; any non-2xx (a 429 above all) makes the run invalid.
  wrk is taken from PATH, or installed with ``apt-get install -y wrk``.
* The ceiling, same run, same connection counts: ``GET /healthz`` by wrk (the
  same process, through the same middleware, with no work behind it).
* ``--before REF``: a second API from git REF (``git archive`` into a temporary
  folder), on the same Redis, measured by the same wrk runs interleaved with
  this tree's: before and after from one run.
* ``POST /v1/jobs`` open loop: ``--rate`` requests/s for ``--seconds`` from one
  asyncio httpx client, each request sent at its scheduled time whether or not
  earlier ones answered. Latency is measured from the *scheduled* send time, so a
  server that falls behind shows it (no coordinated omission).
* ``POST /v1/jobs`` closed loop (the in-process baseline): N httpx clients each
  sending the next request when the last one answered; the client shares the
  process (and the 2 cores) with nothing but itself, and at 32+ clients it is
  the client that saturates, not the API: kept for comparison with wrk.
* ``POST /v1/batches``: a ``--batch``-line NDJSON body, time to the 202, best of
  ``--batch-reps``.
* Baselines, same Redis, same run: arq's own ``ArqRedis.enqueue_job`` for the
  same number of no-op jobs (100 concurrent tasks), and the raw floor, a pipeline of
  the two commands arq's enqueue writes (``PSETEX`` job + ``ZADD`` queue).

The API runs with ``--log-level`` (default INFO, what ``interq api`` runs with
when nothing is set) and one API key.

    .venv/bin/python -m bench.intake [--wrk-conns 1,8,32,128] [--before main] [--quick]
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import statistics
import sys
import time
import uuid
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import typer

from bench import wrk
from bench.common import cli_app, fmt, options, pct, save, stack, table

MODEL = "sim-model"
PROMPT = (
    "Summarise the attached customer ticket in three sentences, then list the product areas "
    "it touches and a suggested priority from P0 to P3. Ticket: the export button on the "
    "billing page times out for accounts with more than ten thousand invoices; the customer "
    "retried four times and opened a second ticket. [sim duration=1]"
)
_seq = itertools.count()
_RUN = uuid.uuid4().hex[:8]  # Idempotency-Keys unique to this process


def job_body(n: int) -> bytes:
    """The body ``bench/wrk_post_job.lua`` sends, for the httpx loops."""
    return json.dumps(
        {
            "interaction": {
                "model": MODEL,
                "input": PROMPT,
                "generation_config": {"temperature": 0.2, "max_output_tokens": 512},
            },
            "webhook": {
                "url": "https://93.184.215.14/hooks/interq",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            },
            "metadata": {"ticket": f"T-py-{n}", "team": "billing"},
            "custom_id": f"ticket-py-{n}",
            "timeout_s": 3600,
        }
    ).encode()


def post_job(c: httpx.AsyncClient) -> Any:
    """One POST /v1/jobs as wrk sends it: own Idempotency-Key, the API key."""
    n = next(_seq)
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {wrk.API_KEY}",
        "idempotency-key": f"bench-py-{_RUN}-{n}",
    }
    return c.post("/v1/jobs", content=job_body(n), headers=headers)


MAX_OUTSTANDING = 2000  # open loop: requests in flight past this are counted as not sent


def summarize(lat_s: list[float], ok: int, errors: int, elapsed: float) -> dict[str, Any]:
    ms = [x * 1000 for x in lat_s]
    return {
        "ok": ok,
        "errors": errors,
        "elapsed_s": elapsed,
        "per_s": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms, default=None),
    }


async def open_loop(api: str, rate: float, seconds: float) -> dict[str, Any]:
    n = int(rate * seconds)
    lat: list[float] = []
    errors = 0
    skipped = 0
    outstanding: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=api, timeout=30, limits=limits) as c:

        async def one(due: float) -> None:
            nonlocal errors
            try:
                r = await post_job(c)
                if r.status_code == 202:
                    lat.append(time.monotonic() - due)
                else:
                    errors += 1
            except httpx.HTTPError:
                errors += 1

        t0 = time.monotonic() + 0.05
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(outstanding) >= MAX_OUTSTANDING:
                skipped += 1
                continue
            task = asyncio.create_task(one(due))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            _, late = await asyncio.wait(list(outstanding), timeout=30)
            for task in late:
                task.cancel()
            errors += len(late)
        elapsed = time.monotonic() - t0
    out = summarize(lat, len(lat), errors, elapsed)
    out.update(offered_per_s=rate, sent=n - skipped, not_sent=skipped)
    return out


async def closed_loop(api: str, clients: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=api, timeout=30, limits=limits) as c:
        end = time.monotonic() + seconds

        async def client() -> None:
            nonlocal errors
            for _ in range(1_000_000):  # bounded by time below; the count is a backstop
                if time.monotonic() >= end:
                    return
                t = time.monotonic()
                try:
                    r = await post_job(c)
                    if r.status_code == 202:
                        lat.append(time.monotonic() - t)
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - t0
    out = summarize(lat, len(lat), errors, elapsed)
    out["clients"] = clients
    return out


def batch_body(n: int, rep: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"b{rep}-{i}",
                "interaction": {"model": MODEL, "input": f"item {i} [sim duration=1]"},
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def batch_intake(api: str, n: int, reps: int) -> dict[str, Any]:
    times = []
    with httpx.Client(base_url=api, timeout=300) as c:
        for rep in range(reps):
            body = batch_body(n, rep)
            t0 = time.monotonic()
            headers = {
                "content-type": "application/x-ndjson",
                "authorization": f"Bearer {wrk.API_KEY}",
            }
            r = c.post("/v1/batches", content=body, headers=headers)
            dt = time.monotonic() - t0
            r.raise_for_status()
            if r.json()["total"] != n:
                raise RuntimeError(f"batch accepted {r.json()['total']} of {n} jobs")
            times.append(dt)
    best = min(times)
    return {
        "jobs": n,
        "reps": reps,
        "seconds": times,
        "best_s": best,
        "median_s": statistics.median(times),
        "per_s": n / best,
        "per_s_median": n / statistics.median(times),
        "body_bytes": len(batch_body(n, 0)),
    }


async def arq_floor(redis_url: str, n: int, concurrency: int = 100) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.constants import job_key_prefix
    from arq.jobs import serialize_job

    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await pool.enqueue_job("noop", i, _queue_name="bench:enqueue")

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        enqueue_s = time.monotonic() - t0
        if await pool.zcard("bench:enqueue") != n:
            raise RuntimeError("arq enqueue_job lost jobs")

        t0 = time.monotonic()
        now_ms = int(time.time() * 1000)
        async with pool.pipeline(transaction=False) as pipe:
            for i in range(n):
                jid = f"pipe-{i}"
                pipe.psetex(
                    job_key_prefix + jid, 86_400_000, serialize_job("noop", (i,), {}, None, now_ms)
                )
                pipe.zadd("bench:pipeline", {jid: now_ms})
            await pipe.execute()
        pipe_s = time.monotonic() - t0
    finally:
        await pool.aclose()
    return {
        "jobs": n,
        "enqueue_job_s": enqueue_s,
        "enqueue_job_per_s": n / enqueue_s,
        "enqueue_job_concurrency": concurrency,
        "pipeline_s": pipe_s,
        "pipeline_per_s": n / pipe_s,
    }


Opt = typer.Option


def command(
    ctx: typer.Context,
    wrk_conns: Annotated[str, Opt(help="wrk: connection counts")] = "1,8,32,128",
    wrk_seconds: Annotated[float, Opt(help="wrk: seconds per count")] = 10.0,
    before: Annotated[str, Opt(help="git ref: also measure an API from it")] = "",
    log_level: Annotated[str, Opt(help="the API's INTERQ_LOG_LEVEL")] = "INFO",
    rate: Annotated[float, Opt(help="open loop: offered requests/s")] = 200.0,
    seconds: Annotated[float, Opt(help="open loop: duration")] = 20.0,
    clients: Annotated[str, Opt(help="closed loop: client counts")] = "1,8,32,128",
    closed_seconds: Annotated[float, Opt(help="closed loop: per count")] = 8.0,
    batch: Annotated[int, Opt(help="jobs per NDJSON batch")] = 10_000,
    batch_reps: Annotated[int, Opt()] = 3,
    quick: Annotated[bool, Opt("--quick", help="short smoke run")] = False,
) -> None:
    a = options(ctx)
    if a.quick:
        a.seconds, a.clients, a.closed_seconds, a.batch, a.batch_reps = 3.0, "1,16", 2.0, 1000, 1
        a.wrk_conns, a.wrk_seconds = "1,32", 3.0
    counts = [int(x) for x in a.clients.split(",") if x.strip()]
    wrk_bin = wrk.find_wrk()
    keys = json.dumps({"bench": hashlib.sha256(wrk.API_KEY.encode()).hexdigest()})

    with stack(workers=0, api_log_level=a.log_level, INTERQ_API_KEYS=keys) as st:
        asyncio.run(closed_loop(st.api_url, 8, 1.0))  # warm-up: connections, caches
        by_wrk = wrk.sweeps(st, a, wrk_bin, keys)
        print(f"open loop: {a.rate:g} req/s for {a.seconds:g} s ...", flush=True)
        opened = asyncio.run(open_loop(st.api_url, a.rate, a.seconds))
        closed = []
        for n in counts:
            print(f"closed loop: {n} clients for {a.closed_seconds:g} s ...", flush=True)
            closed.append(asyncio.run(closed_loop(st.api_url, n, a.closed_seconds)))
        print(f"batch: {a.batch_reps} x {a.batch} NDJSON lines ...", flush=True)
        batched = batch_intake(st.api_url, a.batch, a.batch_reps)
        print(f"arq: {a.batch} x enqueue_job, then a pipeline ...", flush=True)
        floor = asyncio.run(arq_floor(st.redis_url, a.batch))

    print(wrk.report(by_wrk))
    ratios = report(a, opened, closed, batched, floor)
    path = save(
        "intake-quick" if a.quick else "intake",
        {
            "args": vars(a),
            "wrk": by_wrk,
            "open_loop": opened,
            "closed_loop": closed,
            "closed_loop_best_per_s": max(r["per_s"] for r in closed),
            "batch": batched,
            "arq": floor,
            **ratios,
        },
    )
    print(f"written {path.relative_to(path.parent.parent.parent)}")


def report(
    a: SimpleNamespace,
    opened: dict[str, Any],
    closed: list[dict[str, Any]],
    batch: dict[str, Any],
    floor: dict[str, Any],
) -> dict[str, float]:
    """Print the table and the ratios; returns the ratios."""
    best = max(closed, key=lambda r: r["per_s"])
    rows = [("what", "jobs/s", "p50 ms", "p99 ms", "ok", "errors")]
    rows.append(
        (
            f"POST /v1/jobs open loop, {a.rate:g}/s offered",
            fmt(opened["per_s"]),
            fmt(opened["p50_ms"], 2),
            fmt(opened["p99_ms"], 2),
            str(opened["ok"]),
            str(opened["errors"] + opened["not_sent"]),
        )
    )
    for r in closed:
        rows.append(
            (
                f"POST /v1/jobs closed loop, {r['clients']} clients",
                fmt(r["per_s"]),
                fmt(r["p50_ms"], 2),
                fmt(r["p99_ms"], 2),
                str(r["ok"]),
                str(r["errors"]),
            )
        )
    n, sent = str(a.batch), str(a.batch * a.batch_reps)
    for label, per_s, ok in (
        (f"POST /v1/batches, {n} NDJSON lines (best)", batch["per_s"], sent),
        (f"baseline: arq enqueue_job x{n}, 100 tasks", floor["enqueue_job_per_s"], n),
        (f"floor: pipelined PSETEX+ZADD x{n}", floor["pipeline_per_s"], n),
    ):
        rows.append((label, fmt(per_s), "-", "-", ok, "0"))
    print(table(rows))
    ratio_enqueue = batch["per_s"] / floor["enqueue_job_per_s"]
    ratio_pipe = batch["per_s"] / floor["pipeline_per_s"]
    print(
        f"batch intake = {ratio_enqueue:.2f} x arq enqueue_job, {ratio_pipe:.2f} x the raw "
        f"pipeline; single-job max (closed loop) {best['per_s']:.0f}/s at {best['clients']} "
        "clients"
    )
    return {"batch_vs_enqueue_job": ratio_enqueue, "batch_vs_pipeline": ratio_pipe}


main = cli_app(command, "python -m bench.intake", __doc__)


if __name__ == "__main__":
    sys.exit(main())
