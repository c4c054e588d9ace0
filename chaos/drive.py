"""The chaos itself: worker SIGKILLs, one Redis restart, a receiver outage, and the
watching (straight from Redis) until everything has settled, stalled or timed out."""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from chaos.config import KEYS, TERMINAL
from chaos.service import Service
from jobs.dev.receiver import Receiver


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


@dataclass
class Driver:
    """One chaos phase; ``loop`` runs it and returns what happened (``info``)."""

    cl: Service
    recv: Receiver
    job_ids: list[str]
    batch_id: str | None
    rng: random.Random
    deadline: float
    info: dict[str, Any] = field(
        default_factory=lambda: {"redis": {}, "receiver": {}, "timeline": []}
    )
    redis_phase: str = "pending"
    redis_up_at: float = 0.0
    recv_phase: str = "pending"
    recv_start: float = 0.0
    all_terminal: bool = False
    terminal: int = 0
    delivered: int = 0
    snap: Snapshot | None = None

    def __post_init__(self) -> None:
        o = self.cl.opts
        self.t0 = self.cl.t0 = time.monotonic()
        self.r = redis.Redis.from_url(
            self.cl.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )
        self.next_kill = self.t0 + o.kill_every * self.rng.uniform(0.7, 1.3)
        self.total = max(1, len(self.job_ids))
        # nothing moved for this long (past every retry of the schedule and an arq lock
        # of a killed worker): stop waiting and report what is stuck
        self.stall_s = o.stall_s or o.schedule_s() + 2 * (o.step_timeout_s + 10) + 30
        self.last_snap, self.last_change, self.last_sig = 0.0, self.t0, ""

    def receiver_step(self, t: float) -> None:
        """The webhook receiver: 503, then not listening, then back (once deliveries
        flow, so that they meet the outage; or when all jobs ended)."""
        o, say = self.cl.opts, self.cl.say
        if self.recv_phase == "pending" and (
            self.delivered >= max(1, o.receiver_down_after * self.total) or self.all_terminal
        ):
            self.recv.set_mode("503")
            self.recv_phase, self.recv_start = "503", t
            self.info["receiver"] = {"down_at_s": round(t, 2), "events_delivered": self.delivered}
            say(f"t={t:6.1f}s  receiver answers 503 ({self.delivered} events delivered)")
        elif self.recv_phase == "503" and t >= self.recv_start + o.receiver_down_s / 2:
            self.recv.set_mode("down")
            self.recv_phase = "down"
            say(f"t={t:6.1f}s  receiver stopped listening")
        elif self.recv_phase == "down" and t >= self.recv_start + o.receiver_down_s:
            self.info["receiver"]["up_at_s"] = round(t, 2)
            self.recv.set_mode("up")
            self.recv_phase = "done"
            say(f"t={t:6.1f}s  receiver back up")

    def redis_stop(self, now: float, t: float) -> None:
        """Redis stopped once mid-flight (some jobs done, many running, deliveries
        under way)."""
        cl, rd = self.cl, self.info["redis"]
        with contextlib.suppress(redis.RedisError):
            rd["keys_before"] = self.r.dbsize()
        cl.stop_redis()
        rd["stopped_at_s"], rd["jobs_terminal"] = round(t, 2), self.terminal
        cl.say(
            f"t={t:6.1f}s  redis-server {cl.opts.redis_stop.upper()}ed "
            f"({self.terminal} jobs terminal)"
        )
        self.redis_phase, self.redis_up_at = "down", now + cl.opts.redis_down_s
        rd["readyz_while_down"] = probe(f"{cl.api_url}/readyz")
        if self.job_ids:
            rd["get_job_while_down"] = probe(f"{cl.api_url}/v1/jobs/{self.job_ids[0]}")

    def redis_start(self) -> None:
        """... and started again on the same port and directory; how soon is the API ready?"""
        cl, rd = self.cl, self.info["redis"]
        cl.start_redis()
        back = time.monotonic()
        rd["started_at_s"] = round(back - self.t0, 2)
        with contextlib.suppress(redis.RedisError):
            rd["keys_after"] = self.r.dbsize()
        ready = None
        while time.monotonic() - back < 60:
            if probe(f"{cl.api_url}/readyz") == 200:
                ready = round(time.monotonic() - back, 2)
                break
            time.sleep(0.1)
        rd["api_ready_after_s"] = ready
        cl.say(
            f"t={time.monotonic() - self.t0:6.1f}s  redis-server back "
            f"(keys {rd.get('keys_before')} -> {rd.get('keys_after')}); "
            f"API ready after {ready} s"
        )
        self.redis_phase = "done"

    def redis_step(self, now: float, t: float) -> None:
        if self.redis_phase == "pending" and (
            self.terminal >= self.cl.opts.redis_restart_after * self.total
        ):
            self.redis_stop(now, t)
        elif self.redis_phase == "down" and now >= self.redis_up_at:
            self.redis_start()

    def kill_step(self, now: float) -> None:
        """SIGKILL a worker every few seconds while jobs are in flight."""
        o, kills = self.cl.opts, len(self.cl.kills)
        if (
            now >= self.next_kill
            and (not self.all_terminal or kills < o.min_kills)
            and (o.max_kills is None or kills < o.max_kills)
        ):
            self.cl.kill_random_worker(self.rng)
            self.next_kill = time.monotonic() + o.kill_every * self.rng.uniform(0.7, 1.3)

    def watch_step(self, now: float, t: float) -> bool:
        """A snapshot a second; True when the run is over (settled or stalled)."""
        if now - self.last_snap < 1.0 or self.redis_phase == "down":
            return False
        self.last_snap = now
        self.snap = snapshot(self.r, self.job_ids, self.batch_id) or self.snap
        snap = self.snap
        if snap is None:
            return False
        self.terminal, self.delivered = snap.terminal, snap.events["delivered"]
        self.all_terminal = self.terminal == len(self.job_ids)
        settled = snap.settled(len(self.job_ids), self.batch_id is not None)
        sig = repr((sorted(snap.statuses.items()), sorted(snap.events.items())))
        if sig != self.last_sig:
            self.last_sig, self.last_change = sig, now
        elif now - self.last_change > self.stall_s and not settled:
            self.info["stalled"] = True
            self.cl.say(f"t={t:6.1f}s  STALLED: nothing moved for {self.stall_s:.0f} s; giving up")
            return True
        self.info["timeline"].append(
            {"t": round(t, 1), **snap.statuses, "events": dict(snap.events)}
        )
        if len(self.info["timeline"]) % 5 == 1:
            st = " ".join(f"{k} {v}" for k, v in sorted(snap.statuses.items()))
            ev = " ".join(f"{k} {v}" for k, v in sorted(snap.events.items()))
            self.cl.say(f"t={t:6.1f}s  jobs: {st} | events: {ev} | kills {len(self.cl.kills)}")
        o = self.cl.opts
        done_chaos = (
            self.redis_phase == "done"
            and self.recv_phase == "done"
            and len(self.cl.kills) >= min(o.min_kills, o.max_kills or o.min_kills)
        )
        if done_chaos and settled:
            self.cl.say(f"t={t:6.1f}s  everything settled")
            return True
        return False

    def loop(self) -> dict[str, Any]:
        try:
            while True:
                now = time.monotonic()
                t = now - self.t0
                if now > self.deadline:
                    self.info["timed_out"] = True
                    self.cl.say(f"t={t:6.1f}s  TIMED OUT waiting for jobs / deliveries")
                    break
                self.receiver_step(t)
                self.redis_step(now, t)
                self.kill_step(now)
                self.cl.supervise()
                if self.watch_step(now, t):
                    break
                time.sleep(0.2)
        finally:
            self.r.close()
            if self.recv.mode != "up":
                self.recv.set_mode("up")
            if self.redis_phase == "down":  # ended (timeout, error) mid-outage: bring it back
                with contextlib.suppress(RuntimeError):
                    self.cl.start_redis()
        self.info["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        return self.info


def drive(
    cl: Service,
    recv: Receiver,
    job_ids: list[str],
    batch_id: str | None,
    rng: random.Random,
    deadline: float,
) -> dict[str, Any]:
    """The chaos: kills, one Redis restart, a receiver outage, until all is settled."""
    return Driver(cl, recv, job_ids, batch_id, rng, deadline).loop()
