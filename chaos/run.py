"""Chaos run: does interq lose anything when everything around it misbehaves?

    .venv/bin/python -m chaos.run [--jobs 1000] [--workers 3] [--kill-every 3] [--seed N]

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
``/_sim/stats``, prints a table, writes ``chaos/results/last.json`` and exits 1 on
any loss (see ``verdict``). Logs of every process go to a temporary directory, kept
(and their tails printed) when the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.common import ROOT, free_port, machine, table, wait_http
from jobs.cli.main import redis_server_cmd
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


# The suite's short run (tests/test_chaos.py), also ``python -m chaos.run --quick``.
QUICK = Options(
    jobs=100,
    workers=2,
    kill_every=2.0,
    min_kills=3,
    max_kills=3,
    min_duration=1.0,
    max_duration=4.0,
    receiver_down_s=4.0,
    ballast_keys=20_000,  # the full run loads 300,000
    timeout_s=420.0,
    stall_s=90.0,
)


# --------------------------------------------------------------------------- receiver


@dataclass
class Received:
    webhook_id: str
    custom_id: str | None
    owner_id: str
    type: str
    verified: bool


class Receiver:
    """A webhook receiver on a fixed loopback port: verifies each delivery with the
    secret of its job (looked up by ``custom_id``) or of the batch, answers 204 or
    400; ``mode`` "503" answers 503 to everything, "down" closes the socket."""

    def __init__(self, secrets: dict[str, str], batch_secret: str) -> None:
        self.secrets = secrets
        self.batch_secret = batch_secret
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.requests = 0
        self.refused_503 = 0
        self.bad_signature = 0
        self.mode = "up"
        self.port = free_port()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.outages: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with recv.lock:
                    recv.requests += 1
                    if recv.mode != "up":
                        recv.refused_503 += 1
                        self.send_response(503)
                        self.end_headers()
                        return
                try:
                    body = json.loads(raw)
                    etype = str(body.get("type"))
                    data = body.get("data") or {}
                    custom_id = data.get("custom_id")
                    if etype.startswith("batch."):
                        secret = recv.batch_secret
                    else:
                        secret = recv.secrets.get(str(custom_id), "")
                    Webhook(secret).verify(raw, headers)
                    verified = True
                except (ValueError, WebhookVerificationError, AttributeError):
                    verified, etype, custom_id, data = False, "?", None, {}
                with recv.lock:
                    if not verified:
                        recv.bad_signature += 1
                    recv.received.append(
                        Received(
                            headers.get("webhook-id", ""),
                            custom_id,
                            str(data.get("id", "")),
                            etype,
                            verified,
                        )
                    )
                self.send_response(204 if verified else 400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        for _ in range(50):
            try:
                self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"webhook receiver could not bind 127.0.0.1:{self.port}")
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def set_mode(self, mode: str) -> None:
        """ "up", "503" (answer 503) or "down" (not listening)."""
        if mode == self.mode:
            return
        self.outages.append({"at": time.time(), "mode": mode})
        if mode == "down":
            self.stop()
        elif self.httpd is None:
            self.start()
        with self.lock:
            self.mode = mode

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)


# --------------------------------------------------------------------------- processes


@dataclass
class Slot:
    index: int
    gen: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class Cluster:
    """The service's processes (and Redis) with logs in ``tmp/logs``."""

    opts: Options
    tmp: Path
    say: Callable[[str], None]
    redis_port: int = 0
    sim_url: str = ""
    api_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    redis_proc: subprocess.Popen[bytes] | None = None
    redis_gen: int = 0
    sim_proc: subprocess.Popen[bytes] | None = None
    api_proc: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    slots: list[Slot] = field(default_factory=list)
    every: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    self_exits: list[dict[str, Any]] = field(default_factory=list)
    api_exits: list[dict[str, Any]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(log)
        with log.open("ab") as out:
            # own session: a Ctrl-C reaches only this driver, which stops them in order
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.every.append(proc)
        return proc

    # -- redis
    def fill_ballast(self, n: int) -> None:
        """``n`` keys of other data (hashes of a few hundred bytes), compacted
        into the append-only file, so that a restart has a real load to do
        and the processes meet Redis answering LOADING for a while."""
        if n <= 0:
            return
        client = redis.Redis(port=self.redis_port)
        try:
            for start in range(0, n, 10_000):
                with client.pipeline(transaction=False) as pipe:
                    for i in range(start, min(n, start + 10_000)):
                        pipe.hset(f"ballast:{{{i}}}", mapping={"a": "x" * 200, "b": str(i)})
                    pipe.execute()
            while True:  # compact it all into the base file (after any automatic rewrite)
                while client.info("persistence").get("aof_rewrite_in_progress"):
                    time.sleep(0.1)
                try:
                    client.bgrewriteaof()
                    break
                except redis.ResponseError as e:
                    if "in progress" not in str(e):
                        raise
            while client.info("persistence").get("aof_rewrite_in_progress"):
                time.sleep(0.1)
        finally:
            client.close()

    def start_redis(self) -> None:
        if not self.redis_port:
            self.redis_port = free_port()
        data = self.tmp / "redis"
        data.mkdir(exist_ok=True)
        self.redis_gen += 1
        cmd = redis_server_cmd(self.redis_port, str(data), aof=True, fsync_always=True)
        self.redis_proc = self.spawn(f"redis-{self.redis_gen}", cmd, dict(os.environ))
        end = time.monotonic() + 30
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1, socket_timeout=2)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    if self.redis_proc.poll() is not None:
                        raise RuntimeError(
                            f"redis-server exited ({self.redis_proc.returncode}); "
                            f"see {self.logs[-1]}"
                        ) from None
                if time.monotonic() > end:
                    raise RuntimeError("redis-server did not answer within 30 s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop_redis(self) -> None:
        assert self.redis_proc is not None
        if self.opts.redis_stop == "term":
            self.redis_proc.terminate()
        else:
            self.redis_proc.kill()
        self.redis_proc.wait(30)

    # -- the service
    def start_sim(self) -> None:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INTERQ_", "GEMINI_"))}
        cmd = [sys.executable, "-m", "jobs.cli", "simulator", "--port", str(port)]
        self.sim_proc = self.spawn("simulator", cmd, base)
        self.sim_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.sim_url}/_sim/stats", timeout=60)

    def start_api(self) -> None:
        if not self.api_port:
            self.api_port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "api:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.api_port), "--log-level", "warning"]
        self.api_proc = self.spawn(f"api-{len(self.api_exits)}", cmd, self.env)
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        wait_http(f"{self.api_url}/healthz", timeout=60)

    def start_worker(self, slot: Slot) -> None:
        slot.gen += 1
        name = f"worker-{slot.index}-{slot.gen}"
        slot.proc = self.spawn(name, [sys.executable, "-m", "jobs.cli", "worker"], self.env)
        slot.log = self.logs[-1]

    def interq_env(self, receiver_schedule: str) -> None:
        o = self.opts
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INTERQ_", "GEMINI_"))}
        self.env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            "INTERQ_REDIS_URL": self.redis_url,
            "INTERQ_UPSTREAM_URL": self.sim_url,
            "INTERQ_RESULTS_URL": f"file://{self.tmp}/results",
            "INTERQ_WORKER_METRICS_PORT": "0",
            "INTERQ_WEBHOOK_ALLOW_PRIVATE": "true",
            "INTERQ_STEP_TIMEOUT_S": str(o.step_timeout_s),
            "INTERQ_UPSTREAM_TIMEOUT_S": "1",
            "INTERQ_CREATE_TIMEOUT_S": "1",
            "INTERQ_POLL_INITIAL_S": "0.5",
            "INTERQ_POLL_MAX_S": "2",
            "INTERQ_RETRY_INITIAL_S": "0.2",
            "INTERQ_RETRY_MAX_S": "2",
            "INTERQ_WORKER_POLL_DELAY_S": "0.1",
            "INTERQ_WEBHOOK_SCHEDULE_S": receiver_schedule,
            "INTERQ_WEBHOOK_TIMEOUT_S": "2",
        }

    def start_service(self) -> None:
        self.start_redis()
        self.fill_ballast(self.opts.ballast_keys)
        self.start_sim()
        self.interq_env(self.opts.webhook_schedule)
        self.start_api()
        self.slots = [Slot(i) for i in range(self.opts.workers)]
        for slot in self.slots:
            self.start_worker(slot)

    # -- chaos and supervision
    def kill_random_worker(self, rng: random.Random) -> None:
        alive = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
        if not alive:
            return
        slot = rng.choice(alive)
        assert slot.proc is not None
        slot.proc.send_signal(signal.SIGKILL)
        slot.proc.wait(10)
        self.kills.append({"t": self.now(), "worker": f"{slot.index}-{slot.gen}"})
        self.say(f"t={self.now():6.1f}s  SIGKILL worker {slot.index}-{slot.gen}; replacing it")
        self.start_worker(slot)

    def supervise(self) -> None:
        """Restart a worker that exited on its own; note an API that died (a failure)."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                rc = slot.proc.returncode
                why = exit_reason(slot.log)
                self.self_exits.append(
                    {
                        "t": self.now(),
                        "worker": f"{slot.index}-{slot.gen}",
                        "returncode": rc,
                        "reason": why,
                    }
                )
                self.say(
                    f"t={self.now():6.1f}s  worker {slot.index}-{slot.gen} exited by itself "
                    f"({rc}: {why[:160]}); supervisor restarts it"
                )
                self.start_worker(slot)
        if self.api_proc is not None and self.api_proc.poll() is not None:
            self.api_exits.append({"t": self.now(), "returncode": self.api_proc.returncode})
            self.say(f"t={self.now():6.1f}s  API EXITED ({self.api_proc.returncode}); restarting")
            self.start_api()
        if self.sim_proc is not None and self.sim_proc.poll() is not None:
            raise RuntimeError(f"the simulator exited ({self.sim_proc.returncode})")

    def close(self) -> None:
        """Stop everything: workers and the API first (they drain on SIGTERM while
        Redis is still up), then the simulator and Redis."""
        backends = {id(p) for p in (self.redis_proc, self.sim_proc) if p is not None}
        front = [p for p in self.every if id(p) not in backends]
        for group in (front, [p for p in self.every if id(p) in backends]):
            procs = [p for p in group if p.poll() is None]
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
            end = time.monotonic() + 20
            for p in procs:
                try:
                    p.wait(max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)


# --------------------------------------------------------------------------- submitting


@dataclass
class Plan:
    """What gets submitted: one spec per job, keyed by custom_id."""

    singles: list[dict[str, Any]]
    batch: list[dict[str, Any]]
    secrets: dict[str, str]
    batch_secret: str


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


async def submit_all(api_url: str, plan: Plan, hook: str) -> tuple[dict[str, str], str | None]:
    """Every job submitted; returns custom_id -> job id, and the batch id."""
    ids: dict[str, str] = {}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:

        async def one(spec: dict[str, Any]) -> None:
            body = {**spec, "webhook": {"url": hook, "secret": plan.secrets[spec["custom_id"]]}}
            async with gate:
                for attempt in range(5):  # an Idempotency-Key makes a retry safe
                    try:
                        r = await client.post(
                            "/v1/jobs", json=body, headers={"Idempotency-Key": spec["custom_id"]}
                        )
                    except httpx.TransportError:
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    if r.status_code == 202:
                        ids[spec["custom_id"]] = r.json()["id"]
                        return
                    if r.status_code < 500:
                        raise RuntimeError(f"POST /v1/jobs -> {r.status_code}: {r.text}")
                    await asyncio.sleep(0.5 * (attempt + 1))
                raise RuntimeError(f"could not submit {spec['custom_id']}")

        await asyncio.gather(*(one(s) for s in plan.singles))
        batch_id = None
        if plan.batch:
            lines = [
                {**s, "webhook": {"url": hook, "secret": plan.secrets[s["custom_id"]]}}
                for s in plan.batch
            ]
            body = {"jobs": lines, "webhook": {"url": hook, "secret": plan.batch_secret}}
            r = await client.post("/v1/batches", json=body, timeout=120)
            if r.status_code != 202:
                raise RuntimeError(f"POST /v1/batches -> {r.status_code}: {r.text[:500]}")
            batch_id = r.json()["id"]
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"batch_id": batch_id, "limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                page = (await client.get("/v1/jobs", params=params)).json()
                for job in page["data"]:
                    ids[job["custom_id"]] = job["id"]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
    return ids, batch_id


# --------------------------------------------------------------------------- watching


@dataclass
class Snapshot:
    statuses: Counter[str]
    events: Counter[str]  # event state -> count (job events and the batch's)
    jobs_without_event: int
    batch_status: str | None

    @property
    def terminal(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in TERMINAL)

    def settled(self, total: int, batch: bool) -> bool:
        return (
            self.terminal == total
            and self.jobs_without_event == 0
            and self.events["pending"] == 0
            and (not batch or self.batch_status not in (None, "in_progress"))
        )


def snapshot(r: redis.Redis, job_ids: list[str], batch_id: str | None) -> Snapshot | None:
    """Job statuses and event states read straight from Redis (None if unreachable)."""
    try:
        pipe = r.pipeline(transaction=False)
        for jid in job_ids:
            pipe.hget(KEYS.job(jid), "status")
            pipe.lrange(KEYS.job_events(jid), 0, -1)
        if batch_id:
            pipe.hmget(KEYS.batch(batch_id), ["status", "event_id"])
        out = pipe.execute()
        statuses: Counter[str] = Counter()
        event_ids: list[str] = []
        without = 0
        for i in range(len(job_ids)):
            status, evs = out[2 * i], out[2 * i + 1]
            statuses[status or "missing"] += 1
            if status in TERMINAL and not evs:
                without += 1
            event_ids.extend(evs)
        batch_status = None
        if batch_id:
            batch_status, bev = out[-1]
            if bev:
                event_ids.append(bev)
        pipe = r.pipeline(transaction=False)
        for eid in event_ids:
            pipe.hget(KEYS.event(eid), "state")
        events = Counter(s or "missing" for s in pipe.execute())
        return Snapshot(statuses, events, without, batch_status)
    except redis.RedisError:
        return None


def probe(url: str) -> int | str:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError as e:
        return type(e).__name__


def drive(
    cl: Cluster,
    recv: Receiver,
    job_ids: list[str],
    batch_id: str | None,
    rng: random.Random,
    deadline: float,
) -> dict[str, Any]:
    """The chaos: kills, one Redis restart, a receiver outage, until all is settled."""
    o = cl.opts
    t0 = cl.t0 = time.monotonic()
    r = redis.Redis.from_url(
        cl.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
    )
    info: dict[str, Any] = {"redis": {}, "receiver": {}, "timeline": []}
    next_kill = t0 + o.kill_every * rng.uniform(0.7, 1.3)
    redis_phase, redis_up_at = "pending", 0.0
    recv_phase, recv_start = "pending", 0.0
    last_snap, snap = 0.0, None
    all_terminal = False
    terminal = delivered = 0
    total = max(1, len(job_ids))
    # nothing moved for this long (past every retry of the schedule and an arq lock
    # of a killed worker): stop waiting and report what is stuck
    stall_s = o.stall_s or o.schedule_s() + 2 * (o.step_timeout_s + 10) + 30
    last_change, last_sig = t0, ""
    try:
        while True:
            now = time.monotonic()
            t = now - t0
            if now > deadline:
                info["timed_out"] = True
                cl.say(f"t={t:6.1f}s  TIMED OUT waiting for jobs / deliveries")
                break
            # the webhook receiver: 503, then not listening, then back
            # (once deliveries flow, so that they meet the outage; or when all jobs ended)
            if recv_phase == "pending" and (
                delivered >= max(1, o.receiver_down_after * total) or all_terminal
            ):
                recv.set_mode("503")
                recv_phase, recv_start = "503", t
                info["receiver"] = {"down_at_s": round(t, 2), "events_delivered": delivered}
                cl.say(f"t={t:6.1f}s  receiver answers 503 ({delivered} events delivered)")
            elif recv_phase == "503" and t >= recv_start + o.receiver_down_s / 2:
                recv.set_mode("down")
                recv_phase = "down"
                cl.say(f"t={t:6.1f}s  receiver stopped listening")
            elif recv_phase == "down" and t >= recv_start + o.receiver_down_s:
                info["receiver"]["up_at_s"] = round(t, 2)
                recv.set_mode("up")
                recv_phase = "done"
                cl.say(f"t={t:6.1f}s  receiver back up")
            # Redis: stopped once, started again on the same port and directory
            # (mid-flight: some jobs done, many running, deliveries under way)
            if redis_phase == "pending" and terminal >= o.redis_restart_after * total:
                with contextlib.suppress(redis.RedisError):
                    info["redis"]["keys_before"] = r.dbsize()
                cl.stop_redis()
                info["redis"]["stopped_at_s"] = round(t, 2)
                info["redis"]["jobs_terminal"] = terminal
                cl.say(
                    f"t={t:6.1f}s  redis-server {o.redis_stop.upper()}ed ({terminal} jobs terminal)"
                )
                redis_phase, redis_up_at = "down", now + o.redis_down_s
                info["redis"]["readyz_while_down"] = probe(f"{cl.api_url}/readyz")
                if job_ids:
                    info["redis"]["get_job_while_down"] = probe(
                        f"{cl.api_url}/v1/jobs/{job_ids[0]}"
                    )
            elif redis_phase == "down" and now >= redis_up_at:
                cl.start_redis()
                back = time.monotonic()
                info["redis"]["started_at_s"] = round(back - t0, 2)
                with contextlib.suppress(redis.RedisError):
                    info["redis"]["keys_after"] = r.dbsize()
                ready = None
                while time.monotonic() - back < 60:
                    if probe(f"{cl.api_url}/readyz") == 200:
                        ready = round(time.monotonic() - back, 2)
                        break
                    time.sleep(0.1)
                info["redis"]["api_ready_after_s"] = ready
                cl.say(
                    f"t={time.monotonic() - t0:6.1f}s  redis-server back "
                    f"(keys {info['redis'].get('keys_before')} -> "
                    f"{info['redis'].get('keys_after')}); API ready after {ready} s"
                )
                redis_phase = "done"
            # SIGKILL a worker every few seconds while jobs are in flight
            if (
                now >= next_kill
                and (not all_terminal or len(cl.kills) < o.min_kills)
                and (o.max_kills is None or len(cl.kills) < o.max_kills)
            ):
                cl.kill_random_worker(rng)
                next_kill = time.monotonic() + o.kill_every * rng.uniform(0.7, 1.3)
            cl.supervise()
            if now - last_snap >= 1.0 and redis_phase != "down":
                last_snap = now
                snap = snapshot(r, job_ids, batch_id) or snap
                if snap is not None:
                    terminal, delivered = snap.terminal, snap.events["delivered"]
                    all_terminal = terminal == len(job_ids)
                    sig = repr((sorted(snap.statuses.items()), sorted(snap.events.items())))
                    if sig != last_sig:
                        last_sig, last_change = sig, now
                    elif now - last_change > stall_s and not snap.settled(
                        len(job_ids), batch_id is not None
                    ):
                        info["stalled"] = True
                        cl.say(
                            f"t={t:6.1f}s  STALLED: nothing moved for {stall_s:.0f} s; giving up"
                        )
                        break
                    line = {"t": round(t, 1), **snap.statuses, "events": dict(snap.events)}
                    info["timeline"].append(line)
                    if len(info["timeline"]) % 5 == 1:
                        st = " ".join(f"{k} {v}" for k, v in sorted(snap.statuses.items()))
                        ev = " ".join(f"{k} {v}" for k, v in sorted(snap.events.items()))
                        cl.say(f"t={t:6.1f}s  jobs: {st} | events: {ev} | kills {len(cl.kills)}")
                    done_chaos = (
                        redis_phase == "done"
                        and recv_phase == "done"
                        and len(cl.kills) >= min(o.min_kills, o.max_kills or o.min_kills)
                    )
                    if done_chaos and snap.settled(len(job_ids), batch_id is not None):
                        cl.say(f"t={t:6.1f}s  everything settled")
                        break
            time.sleep(0.2)
    finally:
        r.close()
        if recv.mode != "up":
            recv.set_mode("up")
        if redis_phase == "down":  # ended (timeout, error) mid-outage: bring it back to check
            with contextlib.suppress(RuntimeError):
                cl.start_redis()
    info["elapsed_s"] = round(time.monotonic() - t0, 1)
    return info


# --------------------------------------------------------------------------- checking


async def read_jobs(api_url: str, ids: list[str]) -> tuple[dict[str, Any], dict[str, int]]:
    """Every job through the API (None when 404), and the /result code of completed ones."""
    jobs: dict[str, Any] = {}
    results: dict[str, int] = {}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:

        async def get(path: str) -> httpx.Response:
            for attempt in range(10):
                try:
                    r = await client.get(path)
                    if r.status_code < 500:
                        return r
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2 * (attempt + 1))
            raise RuntimeError(f"GET {path}: the API did not answer")

        async def one(jid: str) -> None:
            async with gate:
                r = await get(f"/v1/jobs/{jid}")
                jobs[jid] = r.json() if r.status_code == 200 else None
                if jobs[jid] and jobs[jid]["status"] == "completed":
                    results[jid] = (await get(f"/v1/jobs/{jid}/result")).status_code

        await asyncio.gather(*(one(j) for j in ids))
    return jobs, results


def read_events(
    r: redis.Redis, ids: list[str], batch_id: str | None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any] | None]:
    """Each job's stored events (id, type, state, attempts) and the batch's event."""
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.lrange(KEYS.job_events(jid), 0, -1)
    lists = pipe.execute()
    bev: str | None = r.hget(KEYS.batch(batch_id), "event_id") if batch_id else None  # type: ignore[assignment]
    pipe = r.pipeline(transaction=False)
    flat = [eid for evs in lists for eid in evs] + ([bev] if bev else [])
    for eid in flat:
        pipe.hgetall(KEYS.event(eid))
    got = dict(zip(flat, pipe.execute(), strict=True))

    def view(eid: str) -> dict[str, Any]:
        ev = got.get(eid) or {}
        return {
            "id": eid,
            "type": ev.get("type"),
            "state": ev.get("state", "missing"),
            "attempts": int(ev.get("attempts") or 0),
            "last_error": ev.get("last_error") or None,
        }

    events = {jid: [view(e) for e in evs] for jid, evs in zip(ids, lists, strict=True)}
    return events, (view(bev) if bev else None)


def verdict(
    opts: Options,
    plan: Plan,
    cid_to_id: dict[str, str],
    jobs: dict[str, Any],
    results: dict[str, int],
    events: dict[str, list[dict[str, Any]]],
    batch_event: dict[str, Any] | None,
    batch_id: str | None,
    received: list[Received],
    receiver: Receiver,
    sim_stats: dict[str, Any],
    sim_faults: Counter[str],
    cl: Cluster,
    drive_info: dict[str, Any],
) -> dict[str, Any]:
    ids = list(cid_to_id.values())
    all_cids = [s["custom_id"] for s in plan.singles + plan.batch]
    never = [c for c in all_cids if c not in cid_to_id]  # never got an id at submission
    lost = [j for j in ids if jobs.get(j) is None] + never
    present = {j: v for j, v in jobs.items() if v is not None}
    statuses = Counter(v["status"] for v in present.values())
    not_terminal = {j: v["status"] for j, v in present.items() if v["status"] not in TERMINAL}
    not_completed = {
        j: {"status": v["status"], "error": v.get("error"), "note": v.get("note")}
        for j, v in present.items()
        if v["status"] in TERMINAL and v["status"] != "completed"
    }
    no_result = [j for j, code in results.items() if code != 200]

    # webhooks: one terminal event per finished job, delivered, under one webhook-id
    by_owner: dict[str, set[str]] = defaultdict(set)
    verified_ids: set[str] = set()
    for d in received:
        if d.verified:
            by_owner[d.owner_id].add(d.webhook_id)
            verified_ids.add(d.webhook_id)
    finished = [j for j, v in present.items() if v["status"] in TERMINAL]
    event_states: Counter[str] = Counter()
    undelivered: dict[str, Any] = {}
    extra_events: dict[str, Any] = {}
    multi_ids: dict[str, list[str]] = {}
    wrong_id: dict[str, Any] = {}
    for jid in finished:
        evs = [e for e in events.get(jid, []) if str(e["type"]).startswith("job.")]
        if len(evs) > 1:
            extra_events[jid] = evs
        if not evs:
            undelivered[jid] = "no event stored"
            event_states["missing"] += 1
            continue
        ev = evs[0]
        event_states[ev["state"]] += 1
        if ev["state"] != "delivered" or ev["id"] not in verified_ids:
            undelivered[jid] = {**ev, "received": ev["id"] in verified_ids}
        seen = by_owner.get(jid, set())
        if len(seen) > 1:
            multi_ids[jid] = sorted(seen)
        if seen and seen != {ev["id"]}:
            wrong_id[jid] = {"stored": ev["id"], "received": sorted(seen)}
    batch_undelivered: Any = None
    if batch_id:
        if batch_event is None:
            batch_undelivered = "no batch.completed event stored"
        elif batch_event["state"] != "delivered" or batch_event["id"] not in verified_ids:
            batch_undelivered = {**batch_event, "received": batch_event["id"] in verified_ids}
        elif len(by_owner.get(batch_id, set())) > 1:
            multi_ids[batch_id] = sorted(by_owner[batch_id])
    deliveries = Counter(d.webhook_id for d in received if d.verified)
    retried = sum(1 for evs in events.values() for e in evs if e["attempts"] > 1)
    redelivered = sum(1 for n in deliveries.values() if n > 1)

    # upstream creates: more than one for a job must be flagged possible_duplicate
    creates: dict[str, int] = sim_stats.get("creates_by_job", {})
    dups = {j: n for j, n in creates.items() if n > 1}
    unflagged = {
        j: n for j, n in dups.items() if not (present.get(j) or {}).get("possible_duplicate")
    }
    flagged = sum(1 for v in present.values() if v.get("possible_duplicate"))
    never_created = [
        j for j, v in present.items() if v["status"] == "completed" and creates.get(j, 0) == 0
    ]
    strangers = [j for j in creates if j not in present]

    failures: list[str] = []
    if lost:
        failures.append(f"{len(lost)} jobs lost (no record)")
    if not_terminal:
        failures.append(f"{len(not_terminal)} jobs not terminal")
    if not_completed and not opts.allow_failed:
        failures.append(f"{len(not_completed)} jobs ended other than completed")
    if no_result:
        failures.append(f"{len(no_result)} completed jobs without a readable result")
    if undelivered:
        failures.append(f"{len(undelivered)} job webhook events undelivered")
    if batch_undelivered:
        failures.append("the batch.completed event was not delivered")
    if extra_events:
        failures.append(f"{len(extra_events)} jobs with more than one terminal event")
    if multi_ids:
        failures.append(f"{len(multi_ids)} jobs/batches with more than one distinct webhook-id")
    if wrong_id:
        failures.append(f"{len(wrong_id)} jobs whose received webhook-id is not the stored one")
    if receiver.bad_signature:
        failures.append(f"{receiver.bad_signature} deliveries failed signature verification")
    if unflagged:
        failures.append(f"{len(unflagged)} jobs created upstream more than once, unflagged")
    if never_created:
        failures.append(f"{len(never_created)} completed jobs never created upstream")
    if cl.api_exits:
        failures.append(f"the API exited {len(cl.api_exits)} times")
    if cl.self_exits:
        failures.append(f"workers exited by themselves {len(cl.self_exits)} times")
    if drive_info.get("timed_out"):
        failures.append("timed out before everything settled")
    if drive_info.get("stalled"):
        failures.append("stalled: jobs or events stopped moving before everything settled")

    total_requests = sum(sim_faults.values())
    faulted = total_requests - sim_faults.get("none", 0)
    return {
        "ok": not failures,
        "failures": failures,
        "jobs": {
            "submitted": len(all_cids),
            "single": len(plan.singles),
            "in_batch": len(plan.batch),
            "batch_id": batch_id,
            "lost": len(lost),
            "not_terminal": len(not_terminal),
            "by_status": dict(statuses),
            "not_completed": len(not_completed),
            "completed_without_result": len(no_result),
        },
        "webhooks": {
            "expected": len(finished),
            "delivered": len(finished) - len(undelivered),
            "undelivered": len(undelivered),
            "event_states": dict(event_states),
            "batch_event": batch_event,
            "jobs_with_more_than_one_event": len(extra_events),
            "max_distinct_webhook_ids_per_job": max((len(s) for s in by_owner.values()), default=0),
            "jobs_with_more_than_one_webhook_id": len(multi_ids),
            "received_ids_not_stored": len(wrong_id),
            "receiver_requests": receiver.requests,
            "receiver_answered_503": receiver.refused_503,
            "events_needing_more_than_one_attempt": retried,
            "verified_deliveries": sum(deliveries.values()),
            "events_received_more_than_once": redelivered,
            "bad_signatures": receiver.bad_signature,
        },
        "upstream": {
            "requests": total_requests,
            "faults": {k: v for k, v in sim_faults.items() if k != "none"},
            "fault_share": round(faulted / total_requests, 3) if total_requests else 0,
            "creates": sim_stats.get("created"),
            "jobs_created_more_than_once": len(dups),
            "extra_creates": sum(n - 1 for n in dups.values()),
            "duplicates_flagged": len(dups) - len(unflagged),
            "duplicates_unflagged": len(unflagged),
            "jobs_flagged_possible_duplicate": flagged,
            "completed_never_created": len(never_created),
            "creates_for_unknown_jobs": len(strangers),
        },
        "chaos": {
            "worker_kills": len(cl.kills),
            "worker_self_exits": len(cl.self_exits),
            "self_exits": cl.self_exits,
            "kills": cl.kills,
            "redis_restarts": cl.redis_gen - 1,
            "redis": drive_info.get("redis"),
            "receiver_outage": {
                **(drive_info.get("receiver") or {}),
                "for_s": opts.receiver_down_s,
                "modes": [o["mode"] for o in receiver.outages],
            },
            "api_exits": cl.api_exits,
            "elapsed_s": drive_info.get("elapsed_s"),
        },
        "evidence": {
            "lost": lost[:50],
            "not_terminal": dict(list(not_terminal.items())[:50]),
            "not_completed": dict(list(not_completed.items())[:50]),
            "completed_without_result": no_result[:50],
            "undelivered": dict(list(undelivered.items())[:50]),
            "batch_undelivered": batch_undelivered,
            "more_than_one_event": dict(list(extra_events.items())[:20]),
            "more_than_one_webhook_id": dict(list(multi_ids.items())[:20]),
            "received_id_not_stored": dict(list(wrong_id.items())[:20]),
            "unflagged_duplicates": dict(list(unflagged.items())[:50]),
            "completed_never_created": never_created[:50],
        },
        "timeline": drive_info.get("timeline", []),
    }


def report(s: dict[str, Any]) -> str:
    j, w, u, c = s["jobs"], s["webhooks"], s["upstream"], s["chaos"]
    rd = c.get("redis") or {}

    def mark(bad: bool) -> str:
        return "FAIL" if bad else "ok"

    rows: list[tuple[str, ...]] = [
        (
            "jobs submitted",
            f"{j['submitted']} ({j['single']} single, {j['in_batch']} in a batch)",
            "",
        ),
        ("jobs lost (no record)", str(j["lost"]), mark(j["lost"] > 0)),
        ("jobs not terminal", str(j["not_terminal"]), mark(j["not_terminal"] > 0)),
    ]
    for status in STATUSES:
        if j["by_status"].get(status):
            rows.append((f"  {status}", str(j["by_status"][status]), ""))
    rows += [
        ("completed without a result", str(j["completed_without_result"]),
         mark(j["completed_without_result"] > 0)),
        ("webhook events expected", f"{w['expected']} (one per finished job)", ""),
        ("  delivered", str(w["delivered"]), ""),
        ("  undelivered", str(w["undelivered"]), mark(w["undelivered"] > 0)),
        ("  batch.completed", str((w["batch_event"] or {}).get("state", "-")), ""),
        ("distinct webhook-ids per job (max)", str(w["max_distinct_webhook_ids_per_job"]),
         mark(w["jobs_with_more_than_one_webhook_id"] > 0)),
        ("events received more than once", f"{w['events_received_more_than_once']} "
         "(at-least-once; same webhook-id)", ""),
        ("  needing more than one attempt", str(w["events_needing_more_than_one_attempt"]), ""),
        ("receiver: requests / answered 503 / bad sig",
         f"{w['receiver_requests']} / {w['receiver_answered_503']} / {w['bad_signatures']}",
         mark(w["bad_signatures"] > 0)),
        ("upstream requests / faulted",
         f"{u['requests']} / {u['fault_share']:.0%} {u['faults']}", ""),
        ("upstream creates", str(u["creates"]), ""),
        ("jobs created more than once", f"{u['jobs_created_more_than_once']} "
         f"(+{u['extra_creates']} creates)", ""),
        ("  flagged possible_duplicate", str(u["duplicates_flagged"]), ""),
        ("  unflagged", str(u["duplicates_unflagged"]), mark(u["duplicates_unflagged"] > 0)),
        ("jobs flagged possible_duplicate", str(u["jobs_flagged_possible_duplicate"]), ""),
        ("worker SIGKILLs", str(c["worker_kills"]), ""),
        ("workers that exited by themselves", str(c["worker_self_exits"]), ""),
        ("redis restarts", f"{c['redis_restarts']} (readyz while down: "
         f"{rd.get('readyz_while_down')}, ready {rd.get('api_ready_after_s')} s after)", ""),
        ("API exits", str(len(c["api_exits"])), mark(bool(c["api_exits"]))),
        ("chaos phase", f"{c['elapsed_s']} s", ""),
    ]  # fmt: skip
    body = table([("check", "value", ""), *rows])
    for ex in c.get("self_exits") or []:
        body += (
            f"\n  worker {ex['worker']} exited at t={ex['t']}s ({ex['returncode']}): {ex['reason']}"
        )
    verdict_line = (
        "RESULT: nothing lost" if s["ok"] else "RESULT: FAILED: " + "; ".join(s["failures"])
    )
    return f"{body}\n\n{verdict_line}"


# --------------------------------------------------------------------------- logs


ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")
IDS = re.compile(r"\b(job|evt|bat)_[0-9a-f]{32}\b")


BOX = " \t│╭╰╮╯─"


def plain(line: str) -> bool:
    """Not blank, not indented, not part of a rich traceback's box."""
    return bool(line) and line[0] not in BOX


EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def exit_reason(log: Path | None) -> str:
    """The exception a process died of: the last exception line of its log (with
    the lines a wrapped message continues on)."""
    try:
        text = log.read_text(errors="replace").splitlines() if log else []
    except OSError:
        return ""
    for i in range(len(text) - 1, -1, -1):
        if EXCEPTION.match(text[i]):
            rest = [ln.strip() for ln in text[i + 1 : i + 4] if plain(ln)]
            return " ".join([text[i].strip(), *rest])[:300]
    return next((compact(ln)[:300] for ln in reversed(text) if plain(ln)), "")


def log_errors(logs: list[Path]) -> tuple[dict[str, int], list[str]]:
    """Error lines per log, and up to 12 distinct ones as samples (ids cut; for a
    traceback, the exception that ends it)."""
    counts: dict[str, int] = {}
    samples: dict[str, None] = {}
    for p in logs:
        try:
            text = p.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, ln in enumerate(text):
            if ln.startswith("{"):  # the service logs JSON lines
                try:
                    rec = json.loads(ln)
                except ValueError:
                    rec = {}
                if rec.get("level") not in ("ERROR", "CRITICAL"):
                    continue
                exc = str(rec.get("exc_info") or "").strip().splitlines()
                key = f"{rec.get('logger')}: {rec.get('message')}" + (
                    f" [{exc[-1]}]" if exc else ""
                )
            elif ERROR_LINE.search(ln):
                if "Traceback" in ln:
                    ends = (j for j in range(i + 1, min(i + 400, len(text))) if plain(text[j]))
                    j = next(ends, None)
                    if j is not None:
                        more = [t.strip() for t in text[j + 1 : j + 3] if plain(t)]
                        ln = " ".join([text[j], *more])
                key = ln
            else:
                continue
            counts[p.name] = counts.get(p.name, 0) + 1
            key = IDS.sub(r"\1_…", key)[:300]
            if len(samples) < 12:
                samples.setdefault(f"{p.name.rsplit('-', 1)[0]}: {key}")
    return counts, list(samples)


def step_evidence(r: redis.Redis, summary: dict[str, Any]) -> dict[str, Any]:
    """For each undelivered event and unfinished job: is something still
    scheduled to carry it on (an arq submit step queued or in progress, an
    entry in the poll or delivery index), or nothing at all (orphaned)?"""
    out: dict[str, Any] = {}
    ev = summary.get("evidence") or {}

    def step(arq_id: str) -> str:
        if r.exists(f"arq:in-progress:{arq_id}"):
            return "in progress"
        if r.zscore("interq:queue", arq_id) is not None:
            return "queued" if r.exists(f"arq:job:{arq_id}") else "queued, no arq:job key"
        return "none"

    def due(index: str, member: str) -> str:
        score = r.zscore(f"{PREFIX}:{index}", member)
        return "none" if score is None else f"due in {score / 1000 - time.time():.1f} s"

    for jid, info in (ev.get("undelivered") or {}).items():
        if isinstance(info, dict):
            out[jid] = {"event": info["id"], "delivery index": due("deliveries", info["id"])}
    for jid in ev.get("not_terminal") or {}:
        job: dict[str, str] = r.hgetall(KEYS.job(jid))  # type: ignore[assignment]
        iid = job.get("interaction_id", "")
        out[jid] = {
            "status": job.get("status"),
            "interaction_id": iid or None,
            "submit step": step(f"submit:{jid}"),
            "poll index": due("polls", jid) if iid else "-",
        }
    return out


def compact(line: str) -> str:
    """A JSON log line as "time level logger: message [exception]"."""
    if not line.startswith("{"):
        return line
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    exc = str(rec.get("exc_info") or "").strip().splitlines()
    extra = f" [{exc[-1]}]" if exc else ""
    return f"{rec.get('time')} {rec.get('level')} {rec.get('logger')}: {rec.get('message')}{extra}"


def tails(logs: list[Path], needles: list[str], lines: int = 15) -> str:
    """The last lines of the API, Redis and each worker slot's latest log, and every
    line (of any log) naming one of ``needles``."""
    latest: dict[str, Path] = {}
    for p in logs:  # in start order: the last one per slot wins
        latest[re.sub(r"-\d+\.log$", "", p.name) if p.name.startswith("worker") else p.name] = p
    out = []
    for p in latest.values():
        try:
            text = p.read_text(errors="replace").splitlines()
        except OSError:
            continue
        out.append(f"----- {p} (last {lines} lines)")
        out.extend(compact(ln)[:400] for ln in text[-lines:])
    for needle in needles:
        hits = []
        for p in logs:
            with contextlib.suppress(OSError):
                hits += [
                    f"{p.name}: {compact(ln)[:400]}"
                    for ln in p.read_text(errors="replace").splitlines()
                    if needle in ln
                ]
        out.append(f"----- lines naming {needle}")
        out.extend(sorted(hits, key=lambda h: h.split(": ", 1)[1])[:40])
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def run(opts: Options) -> dict[str, Any]:
    """One chaos run; returns the summary (``summary["ok"]``)."""
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    say: Callable[[str], None] = (
        (lambda _m: None) if opts.quiet else (lambda m: print(m, flush=True))
    )
    tmp = Path(tempfile.mkdtemp(prefix="interq-chaos-"))
    run_id = f"{seed:x}"
    plan = make_plan(opts, rng, run_id)
    cl = Cluster(opts, tmp, say)
    recv = Receiver(plan.secrets, plan.batch_secret)
    started = time.monotonic()
    deadline = started + opts.timeout_s
    summary: dict[str, Any] = {}
    try:
        say(f"chaos run seed={seed}: {opts.jobs} jobs, {opts.workers} workers, logs in {tmp}/logs")
        recv.start()
        cl.start_service()
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
        t_sub = time.monotonic()
        cid_to_id, batch_id = asyncio.run(submit_all(cl.api_url, plan, recv.url))
        say(
            f"submitted {len(cid_to_id)} jobs in {time.monotonic() - t_sub:.1f} s"
            f" (batch {batch_id}); chaos starts"
        )
        ids = list(cid_to_id.values())
        info = drive(cl, recv, ids, batch_id, rng, deadline)
        say("checking every job through the API, Redis, the receiver and the simulator")
        jobs, results = asyncio.run(read_jobs(cl.api_url, ids))
        r = redis.Redis.from_url(cl.redis_url, decode_responses=True, socket_timeout=30)
        try:
            events, batch_event = read_events(r, ids, batch_id)
            stats = httpx.get(f"{cl.sim_url}/_sim/stats", timeout=60).json()
            reqs = httpx.get(f"{cl.sim_url}/_sim/requests", timeout=120).json()
            faults = Counter(str(e.get("fault") or "none") for e in reqs)
            summary = verdict(
                opts, plan, cid_to_id, jobs, results, events, batch_event, batch_id,
                recv.snapshot(), recv, stats, faults, cl, info,
            )  # fmt: skip
            if not summary["ok"]:
                summary["evidence"]["steps"] = step_evidence(r, summary)
        finally:
            r.close()
    except BaseException as e:
        summary = {"ok": False, "failures": [f"the run itself failed: {type(e).__name__}: {e}"]}
        if not isinstance(e, Exception):  # Ctrl-C: clean up, keep nothing
            summary["interrupted"] = True
            raise
    finally:
        with shielded():  # a second Ctrl-C must not leave children behind
            recv.stop()
            cl.close()
        summary["seed"] = seed
        summary["options"] = asdict(opts) | {"seed": seed}
        summary["machine"] = machine()
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        summary["log_errors"], summary["log_error_samples"] = log_errors(cl.logs)
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
            summary["log_tails"] = tails(cl.logs, needles)
        if (summary.get("ok") or summary.get("interrupted")) and not opts.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
            summary["logs"] = None
    return summary


def evidence_text(summary: dict[str, Any], per_kind: int = 10) -> str:
    """The evidence, one line per job (the first few of each kind), with whether a
    step is still scheduled for it."""
    ev = {k: v for k, v in (summary.get("evidence") or {}).items() if v}
    steps = ev.pop("steps", {})
    out = []
    for kind, items in ev.items():
        if not isinstance(items, dict | list):
            out.append(f"{kind}: {json.dumps(items, separators=(',', ':'), default=str)}")
            continue
        out.append(f"{kind} ({len(items)}{'+' if len(items) >= 50 else ''}):")
        rows = items.items() if isinstance(items, dict) else ((x, None) for x in items)
        for n, (key, val) in enumerate(rows):
            if n == per_kind:
                out.append(f"  ... (see {RESULTS.relative_to(ROOT)}/last.json)")
                break
            line = f"  {key}"
            if val is not None:
                line += " " + json.dumps(val, separators=(",", ":"), default=str)[:300]
            if key in steps:
                line += "  steps: " + json.dumps(steps[key], separators=(",", ":"))
            out.append(line)
    return ("evidence:\n" + "\n".join(out)) if out else ""


def save(summary: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "last.json"
    out = {k: v for k, v in summary.items() if k != "log_tails"}
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path


def parse(argv: list[str] | None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=d.jobs)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--kill-every", type=float, default=d.kill_every, help="seconds (±30%%)")
    p.add_argument("--seed", type=int, default=None, help="random if absent; printed")
    p.add_argument("--batch-share", type=float, default=d.batch_share)
    p.add_argument("--min-duration", type=float, default=d.min_duration)
    p.add_argument("--max-duration", type=float, default=d.max_duration)
    p.add_argument("--min-kills", type=int, default=d.min_kills)
    p.add_argument("--max-kills", type=int, default=None)
    p.add_argument(
        "--redis-restart-after",
        type=float,
        default=d.redis_restart_after,
        help="share of the jobs terminal when Redis is stopped",
    )
    p.add_argument("--redis-down", type=float, default=d.redis_down_s)
    p.add_argument(
        "--ballast-keys", type=int, default=d.ballast_keys, help="keys loaded at Redis restart"
    )
    p.add_argument("--redis-stop", choices=("kill", "term"), default=d.redis_stop)
    p.add_argument(
        "--receiver-down-after",
        type=float,
        default=d.receiver_down_after,
        help="share of the jobs' webhook events delivered when the receiver outage starts",
    )
    p.add_argument("--receiver-down", type=float, default=d.receiver_down_s)
    p.add_argument("--webhook-schedule", default=d.webhook_schedule)
    p.add_argument(
        "--late-faults",
        action="store_true",
        help="a timed-out create is created anyway (its answer lost)",
    )
    p.add_argument("--allow-failed", action="store_true", help="failed jobs are not a loss")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="whole run, seconds")
    p.add_argument(
        "--stall", type=float, default=None, help="give up after nothing moved this long"
    )
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--quick", action="store_true", help="the suite's short run (100 jobs)")
    a = p.parse_args(argv)
    if a.quick:
        return replace(QUICK, seed=a.seed, keep_logs=a.keep_logs, quiet=a.quiet)
    return Options(
        jobs=a.jobs,
        workers=a.workers,
        kill_every=a.kill_every,
        seed=a.seed,
        batch_share=a.batch_share,
        min_duration=a.min_duration,
        max_duration=a.max_duration,
        min_kills=a.min_kills,
        max_kills=a.max_kills,
        redis_restart_after=a.redis_restart_after,
        redis_down_s=a.redis_down,
        ballast_keys=a.ballast_keys,
        redis_stop=a.redis_stop,
        receiver_down_after=a.receiver_down_after,
        receiver_down_s=a.receiver_down,
        webhook_schedule=a.webhook_schedule,
        late_faults=a.late_faults,
        allow_failed=a.allow_failed,
        timeout_s=a.timeout,
        stall_s=a.stall,
        keep_logs=a.keep_logs,
        quiet=a.quiet,
    )


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


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    try:
        with sigterm_as_interrupt():
            summary = run(opts)
    except KeyboardInterrupt:
        print("interrupted; every child process was stopped", file=sys.stderr)
        return 130
    if "jobs" in summary:
        print()
        print(report(summary))
    else:
        print("RESULT: FAILED: " + "; ".join(summary["failures"]))
    if summary.get("log_errors"):
        print(f"error lines in logs: {summary['log_errors']}")
        for line in summary["log_error_samples"]:
            print(f"  {line}")
    path = save(summary)
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


if __name__ == "__main__":
    sys.exit(main())
