"""A worker SIGKILLed with 200 jobs in flight loses nothing and bills nothing twice."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from typing import Any

import httpx
import redis

from jobs.delivery.signing import generate_secret
from jobs.dev.harness import Stack
from jobs.settings import Settings
from jobs.storage.keys import Keys
from tests.helpers import Receiver, SimServer, job_body, wait_terminal, wait_until

N_JOBS = 200


async def submit_hooked(api: httpx.AsyncClient, receiver: Receiver) -> list[str]:
    """N_JOBS jobs of 1-4 s, each with a webhook to ``receiver`` (signed)."""
    secret = generate_secret()
    receiver.secret = secret
    ids: list[str] = []
    for i in range(N_JOBS):
        body = job_body(f"job {i} [sim duration={1 + i % 4}]")
        body["webhook"] = {"url": receiver.url, "secret": secret}
        r = await api.post("/v1/jobs", json=body)
        assert r.status_code == 202
        ids.append(r.json()["id"])
    return ids


def check_once_each(
    settings: Settings, sim: SimServer, receiver: Receiver, done: dict[str, dict[str, Any]]
) -> None:
    """Exactly one event per job, deliveries carry only that event's id, and no
    job was created upstream twice unless flagged."""
    ids = list(done)
    r = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
    webhook_ids: dict[str, set[str]] = defaultdict(set)
    for d in receiver.snapshot():
        assert d.verified
        webhook_ids[d.body["data"]["id"]].add(d.msg_id)
    for jid in ids:
        events = r.lrange(Keys().job_events(jid), 0, -1)
        assert len(events) == 1, (jid, events)
        assert webhook_ids[jid] == {events[0]}, (jid, webhook_ids[jid], events)
    creates = sim.state.creates_by_label("interq_job")
    assert set(creates) == set(ids)
    for jid, n in creates.items():
        if n > 1:
            assert done[jid]["possible_duplicate"], f"{jid} created {n} times, not flagged"
    stored = json.loads(r.hget(Keys().job(ids[0]), "interaction_ids") or "[]")
    assert stored == [done[ids[0]]["interaction_id"]]
    r.close()


async def test_sigkill_mid_flight_loses_nothing(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer, receiver: Receiver, stack: Stack
) -> None:
    ids = await submit_hooked(api, receiver)
    stack.start_worker("first")

    async def half_running() -> bool:
        running = (await api.get("/v1/jobs", params={"status": "running", "limit": 1000})).json()
        return len(running["data"]) >= N_JOBS // 4

    await wait_until(half_running, timeout=60, what="jobs in flight")
    stack.kill("first", signal.SIGKILL)
    in_flight = [
        j
        for j in (await api.get("/v1/jobs", params={"limit": 1000})).json()["data"]
        if j["status"] not in ("completed", "failed")
    ]
    assert in_flight, "the kill should land while jobs are still in flight"

    stack.start_worker("second")
    done = await wait_terminal(api, ids, timeout=240)
    await asyncio.to_thread(
        receiver.wait_for,
        lambda ds: {d.body["data"]["id"] for d in ds} >= set(ids),
        120,
        "a webhook for every job",
    )
    assert {j["status"] for j in done.values()} == {"completed"}
    check_once_each(settings, sim, receiver, done)


async def test_killed_workers_claimed_polls_come_back_within_the_lease(
    api: httpx.AsyncClient, settings: Settings, sim: SimServer, stack: Stack
) -> None:
    """A worker SIGKILLed while its poll engine holds claims (every GET hangs):
    the claims are due again within the lease, and another worker ends the jobs."""
    lease_s = 2.0
    ids = [
        (await api.post("/v1/jobs", json=job_body(f"j{i} [sim duration=0.5]"))).json()["id"]
        for i in range(20)
    ]
    sim.state.config.fault_ops = {"get"}
    sim.state.config.slow_s = 600.0
    r = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
    stack.start_worker("first", INTERQ_POLL_LEASE_S=str(lease_s))

    def claimed() -> bool:
        now_ms = time.time() * 1000
        scores = [s for _, s in r.zrange(Keys().polls, 0, -1, withscores=True)]
        return len(scores) == len(ids) and all(s > now_ms + 1000 for s in scores)

    sim.state.config.fault_timeout = 1.0  # from now on every GET hangs
    await wait_until(claimed, timeout=60, what="every poll claimed and hanging")
    stack.kill("first", signal.SIGKILL)
    killed_ms = time.time() * 1000
    scores = [s for _, s in r.zrange(Keys().polls, 0, -1, withscores=True)]
    assert len(scores) == len(ids)
    assert max(scores) <= killed_ms + lease_s * 1000  # due again within the lease
    sim.state.config.fault_timeout = 0.0
    stack.start_worker("second", INTERQ_POLL_LEASE_S=str(lease_s))
    done = await wait_terminal(api, ids, timeout=120)
    assert {j["status"] for j in done.values()} == {"completed"}
    r.close()
