"""The chaos run's options, constants and plan of what gets submitted."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from bench.common import ROOT
from jobs.delivery.signing import generate_secret
from jobs.storage.keys import Keys

RESULTS = ROOT / "chaos" / "results"
PREFIX = "interq"  # INTERQ_KEY_PREFIX (default)
KEYS = Keys(PREFIX)
MODEL = "sim-model"
TERMINAL = {"completed", "failed", "cancelled", "incomplete", "expired"}
STATUSES = ("queued", "running", "requires_action", *sorted(TERMINAL))


@dataclass
class Options:
    jobs: int = 1000
    workers: int = 3
    kill_every: float = 3.0
    seed: int | None = None
    batch_share: float = 0.3  # share of the jobs sent as one batch (the rest: single POSTs)
    min_duration: float = 1.0  # simulated job durations, uniform in [min, max]
    max_duration: float = 10.0
    fault_5xx: float = 0.10
    fault_429: float = 0.05
    fault_timeout: float = 0.05
    late_faults: bool = False  # a timed-out create was created anyway (response lost)
    min_kills: int = 3  # keep killing until at least this many, even if all is done
    max_kills: int | None = None
    redis_restart_after: float = 0.3  # share of the jobs terminal when Redis is stopped
    redis_down_s: float = 3.0
    ballast_keys: int = 300_000  # keys in Redis before the run, so its restart has data to load
    redis_stop: str = "kill"  # "kill" (SIGKILL) or "term" (SIGTERM)
    receiver_down_after: float = 0.02  # share of the jobs' events delivered when it starts
    receiver_down_s: float = 10.0  # first half answering 503, second half not listening
    webhook_schedule: str = "0.5,1,2,4,8,15"
    step_timeout_s: float = 5.0
    timeout_s: float = 900.0  # the whole run
    stall_s: float | None = None  # give up when nothing moves this long (None: from the schedule)
    allow_failed: bool = False  # every input is meant to complete; else a non-completed job fails
    keep_logs: bool = False
    quiet: bool = False

    def schedule_s(self) -> float:
        return sum(float(x) for x in self.webhook_schedule.split(",") if x.strip())

    def quick(self) -> Options:
        """The short run (as in tests/test_chaos.py): 100 jobs, 2 workers, 3 SIGKILLs,
        one Redis restart with 20,000 ballast keys, a 4 s receiver outage."""
        return replace(
            self,
            jobs=100,
            workers=2,
            kill_every=2.0,
            min_kills=3,
            max_kills=3,
            min_duration=1.0,
            max_duration=4.0,
            receiver_down_s=4.0,
            ballast_keys=20_000,
            timeout_s=420.0,
            stall_s=90.0,
        )


@dataclass
class Plan:
    """What gets submitted: one spec per job, keyed by custom_id."""

    singles: list[dict[str, Any]]
    batch: list[dict[str, Any]]
    secrets: dict[str, str]  # custom_id -> the secret of its job's webhook
    batch_secret: str

    def secret_for(self, body: Any) -> str | None:
        """The secret a webhook body is signed with: the batch's for a batch
        event, else the job's (by ``data.custom_id``)."""
        if not isinstance(body, dict):
            return None
        if str(body.get("type", "")).startswith("batch."):
            return self.batch_secret
        data = body.get("data")
        return self.secrets.get(str(data.get("custom_id"))) if isinstance(data, dict) else None


def make_plan(opts: Options, rng: random.Random, run_id: str) -> Plan:
    n_batch = round(opts.jobs * opts.batch_share)
    specs = []
    secrets: dict[str, str] = {}
    for i in range(opts.jobs):
        cid = f"chaos-{run_id}-{i}"
        d = rng.uniform(opts.min_duration, opts.max_duration)
        secrets[cid] = generate_secret()
        specs.append(
            {
                "custom_id": cid,
                "interaction": {"model": MODEL, "input": f"chaos job {i} [sim duration={d:.2f}]"},
                "metadata": {"chaos": run_id, "i": i},
            }
        )
    return Plan(specs[n_batch:], specs[:n_batch], secrets, generate_secret())
