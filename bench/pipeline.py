"""Pipeline benchmark: completed jobs per second through ONE interq worker process
with an instant upstream, against bare arq running no-op jobs on the same Redis.

interq: the simulator answers every interaction as already done (``[sim
duration=0]``), the first poll comes ``INTERQ_POLL_INITIAL_S`` (0.05 s) after the
create, no budget limits, no webhooks unless ``--webhook``. A ``--jobs``-line
batch is posted with the worker already up; the clock runs from the batch's 202
to its last job's terminal transition (the batch's ``done`` counter, read from
Redis every 20 ms), or with ``--webhook`` (a tenant default endpoint on a local
receiver, so every job's event is delivered) to the last delivery received.

Steps per job are counted, not assumed: creates and GETs from the simulator's
stats (each submit step sends one create, each poll step one GET), plus webhook
deliveries when ``--webhook`` (the receiver counts them), over the number of jobs.

Baseline: one bare arq worker process (``async def noop(ctx): pass``) with the
same ``max_jobs``, ``poll_delay`` and ``keep_result=0`` as interq's worker, on the
same redis-server after interq's worker has stopped; ``--arq-jobs`` no-op jobs
are written in one pipeline with the worker up, and the clock runs until the
queue is empty (arq removes a job from its queue when it finishes). A second
baseline does the same with jobs that each make one httpx GET to the simulator
(client limits as interq's upstream client): every interq step makes one such
upstream call, which a no-op does not, so that row shows how much of the gap is
the HTTP client and how much is interq's own bookkeeping.

Target: interq jobs/s >= 0.70 x (arq no-op jobs/s / steps per interq job).

    .venv/bin/python -m bench.pipeline [--jobs 3000] [--arq-jobs 10000] [--webhook] [--quick]
"""

from __future__ import annotations

import contextlib
import enum
import sys
import time
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import typer

from bench.common import (
    MemSampler,
    Stack,
    cli_app,
    fmt,
    ndjson,
    options,
    run_arq_worker,
    save,
    stack,
    start_arq_worker,
    sync_redis,
    table,
    wait_until,
)
from jobs.dev.receiver import Receiver
from jobs.storage.keys import Keys

KEYS = Keys()
MODEL = "sim-model"
NOOP_QUEUE = "bench:noop"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def noop(ctx: dict[str, Any]) -> None:
    pass


async def http_get(ctx: dict[str, Any]) -> None:
    """One GET of an interaction, with an httpx client set up like interq's."""
    r = await ctx["http"].get(ctx["url"])
    r.raise_for_status()


def http_startup(sim_url: str, iid: str) -> Any:
    async def startup(ctx: dict[str, Any]) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        ctx["http"] = httpx.AsyncClient(timeout=30, limits=limits)
        ctx["url"] = f"{sim_url}/v1beta/interactions/{iid}?stream=false"

    return startup


async def http_shutdown(ctx: dict[str, Any]) -> None:
    if "http" in ctx:
        await ctx["http"].aclose()


def batch_body(n: int) -> bytes:
    return ndjson(
        {
            "custom_id": f"p-{i}",
            "interaction": {"model": MODEL, "input": f"item {i} [sim duration=0]"},
        }
        for i in range(n)
    )


def post_batch(st: Stack, jobs: int, receiver: Receiver | None) -> tuple[str, float]:
    """Set the tenant's webhook endpoint (with a receiver), post the batch; returns
    its id and the monotonic time of its 202."""
    with httpx.Client(base_url=st.api_url, timeout=120) as c:
        if receiver is not None:
            endpoint = {"url": receiver.url, "secret": SECRET}
            c.put("/v1/webhook-endpoint", json=endpoint).raise_for_status()
        resp = c.post(
            "/v1/batches",
            content=batch_body(jobs),
            headers={"content-type": "application/x-ndjson"},
        )
        t0 = time.monotonic()
        resp.raise_for_status()
        return str(resp.json()["id"]), t0


def wait_batch(r: Any, key: str, jobs: int, receiver: Receiver | None, budget: float) -> int:
    """Wait for the batch's jobs (and, with a receiver, their deliveries); returns
    how many jobs are done."""
    try:
        wait_until(lambda: int(r.hget(key, "done") or 0) >= jobs, budget, 0.02, "the batch")
    except RuntimeError:
        pass  # reported below as fewer jobs done
    done = int(r.hget(key, "done") or 0)
    if receiver is not None:
        # each job's delivery follows its terminal transition, and the batch's own
        # batch.completed event the last one: the clock stops when all have landed
        want = done + (1 if done == jobs else 0)
        with contextlib.suppress(RuntimeError):
            wait_until(lambda: len(receiver.deliveries) >= want, 30, 0.02, "webhook deliveries")
    return done


def run_interq(st: Stack, jobs: int, max_jobs: int, webhook: bool, budget: float) -> dict[str, Any]:
    st.sim_config(duration_s=0.0)
    worker = st.start_worker("worker-interq", INTERQ_WORKER_MAX_JOBS=str(max_jobs))
    mem = MemSampler(worker.pid, every=0.5)
    # answers 204 to every delivery, as a receiver that keeps up does
    receiver = Receiver(SECRET, require_signature=False).start() if webhook else None
    r = sync_redis(st.redis_url)
    delivered = 0
    try:
        bid, t0 = post_batch(st, jobs, receiver)
        key = KEYS.batch(bid)
        done = wait_batch(r, key, jobs, receiver, budget)
        elapsed = time.monotonic() - t0
        delivered = len(receiver.deliveries) if receiver is not None else 0
        counts = {k.decode(): int(v) for k, v in r.hgetall(key + ":counts").items()}
        ids = [x.decode() for x in r.lrange(key + ":jobs", 0, -1)]
        pipe = r.pipeline(transaction=False)
        for jid in ids:
            pipe.hget(KEYS.job(jid), "poll_count")
        poll_counts = sum(int(x or 0) for x in pipe.execute())
        memory = mem.stop()
    finally:
        r.close()
        st.stop_proc(worker)
        if receiver is not None:
            receiver.stop()
    stats = st.sim_stats()
    steps = stats["creates"] + stats["gets"] + delivered
    return {
        "jobs": jobs,
        "done": done,
        "counts": counts,
        "elapsed_s": elapsed,
        "jobs_per_s": done / elapsed,
        "creates": stats["creates"],
        "gets": stats["gets"],
        "pending_polls_from_records": poll_counts,
        "deliveries": delivered,
        "steps_per_job": steps / max(1, done),
        "worker_memory": memory,
    }


def run_arq(
    st: Stack, kind: str, jobs: int, max_jobs: int, poll_delay: float, budget: float
) -> dict[str, Any]:
    """Bare arq: ``kind`` "noop" (the floor) or "http_get" (one upstream GET per job)."""
    from arq.constants import job_key_prefix
    from arq.jobs import serialize_job

    r = sync_redis(st.redis_url)
    cmd = [sys.executable, "-m", "bench.pipeline", "--arq-worker", kind, "--redis", st.redis_url]
    cmd += ["--max-jobs", str(max_jobs), "--poll-delay", str(poll_delay)]
    if kind == "http_get":
        created = httpx.post(
            f"{st.sim_url}/v1beta/interactions",
            json={"model": MODEL, "input": "x [sim duration=0]", "background": True},
            timeout=10,
        )
        created.raise_for_status()
        cmd += ["--sim", st.sim_url, "--iid", created.json()["id"]]
    worker = start_arq_worker(st, f"worker-arq-{kind}", cmd, NOOP_QUEUE)
    try:
        now_ms = int(time.time() * 1000)
        pipe = r.pipeline(transaction=False)
        payload = serialize_job(kind, (), {}, None, now_ms)
        for i in range(jobs):
            jid = f"{kind}-{i}"
            pipe.psetex(job_key_prefix + jid, 86_400_000, payload)
            pipe.zadd(NOOP_QUEUE, {jid: now_ms})
        pipe.execute()
        t0 = time.monotonic()
        try:
            wait_until(lambda: r.zcard(NOOP_QUEUE) == 0, budget, 0.02, "the no-op jobs")
        except RuntimeError:
            pass
        elapsed = time.monotonic() - t0
        left = int(r.zcard(NOOP_QUEUE))
    finally:
        r.close()
        st.stop_proc(worker)
    return {
        "jobs": jobs,
        "done": jobs - left,
        "elapsed_s": elapsed,
        "jobs_per_s": (jobs - left) / elapsed,
        "max_jobs": max_jobs,
        "poll_delay_s": poll_delay,
    }


Opt = typer.Option


class WorkerKind(enum.StrEnum):
    """``--arq-worker``: which bare arq worker this process runs."""

    noop = "noop"
    http_get = "http_get"


def command(
    ctx: typer.Context,
    jobs: Annotated[int, Opt(help="interq jobs in the batch")] = 3000,
    arq_jobs: Annotated[int, Opt(help="no-op jobs for the baseline")] = 10_000,
    max_jobs: Annotated[int, Opt(help="worker max_jobs (interq default)")] = 200,
    poll_delay: Annotated[float, Opt(help="worker poll delay (default)")] = 0.2,
    webhook: Annotated[bool, Opt("--webhook", help="every job also delivers a webhook")] = False,
    log_level: Annotated[str, Opt(help="interq worker log level (shipped: INFO)")] = "INFO",
    budget_s: Annotated[float, Opt(help="time limit per run")] = 240.0,
    quick: Annotated[bool, Opt("--quick", help="short smoke run")] = False,
    arq_worker: Annotated[WorkerKind | None, Opt(hidden=True)] = None,
    redis: Annotated[str | None, Opt(hidden=True)] = None,
    sim: Annotated[str | None, Opt(hidden=True)] = None,
    iid: Annotated[str | None, Opt(hidden=True)] = None,
) -> None:
    a = options(ctx)
    if a.arq_worker == "noop":
        run_arq_worker([noop], a.redis, NOOP_QUEUE, a.max_jobs, a.poll_delay)
        return
    if a.arq_worker == "http_get":
        startup = http_startup(a.sim, a.iid)
        run_arq_worker(
            [http_get], a.redis, NOOP_QUEUE, a.max_jobs, a.poll_delay, startup, http_shutdown
        )
        return
    if a.quick:
        a.jobs, a.arq_jobs, a.budget_s = 300, 1000, 30.0
    interq, arq, arq_http = run_all(a)
    figures = report(a, interq, arq, arq_http)
    path = save(
        "pipeline-quick" if a.quick else "pipeline",
        {"args": vars(a), "interq": interq, "arq_noop": arq, "arq_http_get": arq_http, **figures},
    )
    print(f"written {path.relative_to(path.parent.parent.parent)}")


def run_all(a: SimpleNamespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """interq, then the two arq baselines, on one stack."""
    env = {
        "INTERQ_POLL_INITIAL_S": "0.05",
        "INTERQ_POLL_JITTER": "0",
        "INTERQ_WORKER_POLL_DELAY_S": str(a.poll_delay),
        "INTERQ_LOG_LEVEL": a.log_level,
    }
    with stack(workers=0, env=env) as st:
        print(f"interq: {a.jobs} jobs, one worker, max_jobs {a.max_jobs} ...", flush=True)
        interq = run_interq(st, a.jobs, a.max_jobs, a.webhook, a.budget_s)
        print(f"arq: {a.arq_jobs} no-op jobs, one worker ...", flush=True)
        arq = run_arq(st, "noop", a.arq_jobs, a.max_jobs, a.poll_delay, a.budget_s)
        print(f"arq: {a.arq_jobs} jobs of one httpx GET each, one worker ...", flush=True)
        arq_http = run_arq(st, "http_get", a.arq_jobs, a.max_jobs, a.poll_delay, a.budget_s)
    return interq, arq, arq_http


def report(
    a: SimpleNamespace, interq: dict[str, Any], arq: dict[str, Any], arq_http: dict[str, Any]
) -> dict[str, float]:
    """Print the table and the ratios; returns the floors and ratios."""
    steps = interq["steps_per_job"]
    floor = arq["jobs_per_s"] / steps
    ratio = interq["jobs_per_s"] / floor
    # submit and poll each make one upstream call; a delivery makes one outgoing POST
    http_floor = arq_http["jobs_per_s"] / steps
    http_ratio = interq["jobs_per_s"] / http_floor
    rows = [("run", "jobs/s", "done", "seconds", "steps/job", "worker peak RSS MB")]
    rows.append(
        (
            "interq, instant upstream" + (" + webhook" if a.webhook else ""),
            fmt(interq["jobs_per_s"]),
            f"{interq['done']}/{a.jobs}",
            fmt(interq["elapsed_s"], 2),
            fmt(steps, 2),
            fmt(interq["worker_memory"]["vm_hwm_mb"]),
        )
    )
    for label, run in (("arq no-op", arq), ("arq, one httpx GET per job", arq_http)):
        done = f"{run['done']}/{a.arq_jobs}"
        rows.append((label, fmt(run["jobs_per_s"]), done, fmt(run["elapsed_s"], 2), "1", "-"))
    rows.append(("arq no-op / interq steps per job", fmt(floor), "", "", "", ""))
    rows.append(("arq httpx GET / interq steps per job", fmt(http_floor), "", "", "", ""))
    print(table(rows))
    print(
        f"interq / (arq no-op floor / steps per job) = {ratio:.2f} (target >= 0.70); "
        f"interq / (arq + one httpx call / steps per job) = {http_ratio:.2f}"
    )
    print(
        f"steps: {interq['creates']} creates + {interq['gets']} GETs + "
        f"{interq['deliveries']} deliveries for {interq['done']} jobs"
    )
    return {
        "floor_per_s": floor,
        "ratio": ratio,
        "http_floor_per_s": http_floor,
        "http_ratio": http_ratio,
    }


main = cli_app(command, "python -m bench.pipeline", __doc__)


if __name__ == "__main__":
    sys.exit(main())
