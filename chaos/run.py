"""Chaos run: does interq lose anything when everything around it misbehaves?

    .venv/bin/python -m chaos.run [--jobs 1000] [--workers 3] [--kill-every 3] [--seed N]
    .venv/bin/python -m chaos.run --quick   # 100 jobs, 2 workers: a few minutes

Starts, as real processes on loopback: a private redis-server with append-only on
(``appendfsync always``), the simulator failing ~20 % of calls (5xx, 429, timeouts),
the API and N workers, plus an in-process webhook receiver that verifies every
delivery with ``standardwebhooks``. It submits the jobs (single POSTs, each with its
own webhook, and one batch whose lines carry their own webhooks), then drives:

* a random worker SIGKILLed every ``--kill-every`` seconds (±30 %) and replaced;
* Redis SIGKILLed once and started again on the same port and data directory,
  with ``--ballast-keys`` (300,000) keys of other data to load first, so every
  process meets Redis answering LOADING;
* the receiver answering 503 and then not listening at all for a stretch;
* any worker that exits on its own restarted, as ``interq up`` does (counted).

Then it waits until every job is terminal and every webhook event delivered or
dead, checks everything through the API, Redis, the receiver and the simulator's
``/_sim/stats``, prints a table, writes ``chaos/results/last.json`` (a --quick run:
``chaos/results/quick.json``) and exits 1 on any loss (see ``chaos.verdict``). Logs
of every process go to a temporary directory, kept (and their tails printed) when
the run fails.

The pieces: ``chaos.config`` (options, plan), ``chaos.service`` (the processes, on
``jobs.dev.harness.Stack``; the receiver is ``jobs.dev.receiver.Receiver``),
``chaos.api_io`` (submit, read back), ``chaos.drive`` (the chaos), ``chaos.verdict``,
``chaos.report``, ``chaos.logs``, ``chaos.cli`` (options).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import ROOT, machine
from chaos.api_io import read_events, read_jobs, submit_all
from chaos.config import Options, Plan, make_plan
from chaos.drive import drive
from chaos.logs import log_errors, tails
from chaos.report import evidence_text, report, save
from chaos.service import Service
from chaos.verdict import RunResult, step_evidence, verdict
from jobs.dev.receiver import Receiver

__all__ = ["Options", "evidence_text", "main", "report", "run"]


def configure_sim(cl: Service, opts: Options, seed: int) -> None:
    httpx.post(
        f"{cl.sim_url}/_sim/config",
        json={
            "seed": seed,
            "fault_5xx": opts.fault_5xx,
            "fault_429": opts.fault_429,
            "fault_timeout": opts.fault_timeout,
            "faults_after_create": opts.late_faults,
            "slow_s": 2.0,
            "retry_delay_s": 0.5,
        },
        timeout=10,
    ).raise_for_status()


def submit_drive_check(
    cl: Service, recv: Receiver, plan: Plan, rng: random.Random, deadline: float
) -> dict[str, Any]:
    """Submit every job, run the chaos, read everything back and judge it."""
    t_sub = time.monotonic()
    cid_to_id, batch_id = asyncio.run(submit_all(cl.api_url, plan, recv.url))
    cl.say(
        f"submitted {len(cid_to_id)} jobs in {time.monotonic() - t_sub:.1f} s"
        f" (batch {batch_id}); chaos starts"
    )
    ids = list(cid_to_id.values())
    info = drive(cl, recv, ids, batch_id, rng, deadline)
    cl.say("checking every job through the API, Redis, the receiver and the simulator")
    jobs, results = asyncio.run(read_jobs(cl.api_url, ids))
    r = redis.Redis.from_url(cl.redis_url, decode_responses=True, socket_timeout=30)
    try:
        events, batch_event = read_events(r, ids, batch_id)
        stats = httpx.get(f"{cl.sim_url}/_sim/stats", timeout=60).json()
        reqs = httpx.get(f"{cl.sim_url}/_sim/requests", timeout=120).json()
        faults = Counter(str(e.get("fault") or "none") for e in reqs)
        res = RunResult(
            cl.opts, plan, cid_to_id, jobs, results, events, batch_event, batch_id,
            recv.snapshot(), recv, stats, faults, cl, info,
        )  # fmt: skip
        summary = verdict(res)
        if not summary["ok"]:
            summary["evidence"]["steps"] = step_evidence(r, summary)
        return summary
    finally:
        r.close()


def finish(summary: dict[str, Any], opts: Options, cl: Service, seed: int, tmp: Path) -> None:
    """What every summary carries, and the logs' tails when the run failed."""
    summary["seed"] = seed
    summary["options"] = asdict(opts) | {"seed": seed}
    summary["machine"] = machine()
    summary["log_errors"], summary["log_error_samples"] = log_errors(cl.logs())
    summary["logs"] = str(tmp / "logs")
    if not summary.get("ok"):
        ev = summary.get("evidence") or {}
        needles = [
            *ev.get("lost", []),
            *ev.get("not_terminal", {}),
            *ev.get("not_completed", {}),
            *[v["id"] for v in ev.get("undelivered", {}).values() if isinstance(v, dict)],
            *ev.get("unflagged_duplicates", {}),
        ][:5]
        summary["log_tails"] = tails(cl.logs(), needles)
    if (summary.get("ok") or summary.get("interrupted")) and not opts.keep_logs:
        shutil.rmtree(tmp, ignore_errors=True)
        summary["logs"] = None


def run(opts: Options) -> dict[str, Any]:
    """One chaos run; returns the summary (``summary["ok"]``)."""
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    say: Callable[[str], None] = (
        (lambda _m: None) if opts.quiet else (lambda m: print(m, flush=True))
    )
    tmp = Path(tempfile.mkdtemp(prefix="interq-chaos-"))
    plan = make_plan(opts, rng, f"{seed:x}")
    cl = Service(opts, tmp, say)
    recv = Receiver(secret_for=plan.secret_for)
    started = time.monotonic()
    summary: dict[str, Any] = {}
    try:
        say(f"chaos run seed={seed}: {opts.jobs} jobs, {opts.workers} workers, logs in {tmp}/logs")
        recv.start()
        cl.start()
        configure_sim(cl, opts, seed)
        summary = submit_drive_check(cl, recv, plan, rng, started + opts.timeout_s)
    except BaseException as e:
        summary = {"ok": False, "failures": [f"the run itself failed: {type(e).__name__}: {e}"]}
        if not isinstance(e, Exception):  # Ctrl-C: clean up, keep nothing
            summary["interrupted"] = True
            raise
    finally:
        with shielded():  # a second Ctrl-C must not leave children behind
            recv.stop()
            cl.close()
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        finish(summary, opts, cl, seed, tmp)
    return summary


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """SIGINT and SIGTERM ignored for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP end the run like Ctrl-C: children are stopped in ``finally``."""

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def print_summary(summary: dict[str, Any], quick: bool) -> int:
    if "jobs" in summary:
        print()
        print(report(summary))
    else:
        print("RESULT: FAILED: " + "; ".join(summary["failures"]))
    if summary.get("log_errors"):
        print(f"error lines in logs: {summary['log_errors']}")
        for line in summary["log_error_samples"]:
            print(f"  {line}")
    path = save(summary, quick)
    print(f"summary: {path.relative_to(ROOT)}  (seed {summary['seed']})")
    if not summary["ok"]:
        text = evidence_text(summary)
        if text:
            print("\n" + text)
        if summary.get("log_tails"):
            print("\n" + summary["log_tails"])
        print(f"\nlogs kept in {summary['logs']}")
        return 1
    return 0


def execute(opts: Options, quick: bool = False) -> int:
    """Run, print, save; the exit code (130: interrupted)."""
    try:
        with sigterm_as_interrupt():
            summary = run(opts)
    except KeyboardInterrupt:
        print("interrupted; every child process was stopped", file=sys.stderr)
        return 130
    return print_summary(summary, quick)


def main(argv: list[str] | None = None) -> int:
    from chaos.cli import app

    return app(argv)


if __name__ == "__main__":
    sys.exit(main())
