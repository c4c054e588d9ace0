"""The transition and purge scripts, driven directly against a real Redis (no
worker, no upstream): what each one moves, that a stale one moves nothing,
and that every key a script touches is one it was given."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest
from redis.crc import key_slot

from jobs.domain import lifecycle as outcomes
from jobs.domain.records import Event, EventState, Job
from jobs.domain.statuses import JobStatus
from jobs.services import Services
from jobs.settings import Settings
from jobs.storage import purge
from jobs.storage.keys import Keys
from jobs.work.dispatch import Dispatcher, lane_of
from tests.helpers import hand_event

LUA = resources.files("jobs.storage").joinpath("lua")


@pytest.fixture()
async def svc(clean_redis: str, tmp_path: Path) -> AsyncIterator[Services]:
    s = Services.open(Settings(redis_url=clean_redis, results_url=f"file://{tmp_path}"))
    yield s
    await s.close()


def test_every_key_comes_from_keys() -> None:
    """No script builds a key name (from a prefix or otherwise): every key it
    touches arrives in KEYS, and its header names its KEYS and ARGV."""
    for script in LUA.iterdir():
        text = script.read_text()
        assert "prefix" not in text, script.name
        assert not re.search(r"\.\.\s*'[^']*:", text), f"{script.name} builds a key"
        first = next(ln for ln in text.splitlines() if not ln.startswith("--"))
        header = text[: text.index(first)]
        assert "KEYS" in header and ("ARGV" in header or "ARGV" not in text), script.name


def test_a_jobs_keys_share_its_hash_tag() -> None:
    k = Keys()
    assert k.job("job_a") == "interq:job:{job_a}"
    assert key_slot(k.job("job_a").encode()) == key_slot(k.job_events("job_a").encode())
    assert key_slot(k.event("evt_a").encode()) == key_slot(k.event_attempts("evt_a").encode())
    batch = [k.batch("b"), k.batch_counts("b"), k.batch_jobs("b"), k.batch_events("b")]
    assert len({key_slot(x.encode()) for x in batch}) == 1
    assert k.owner("job:job_a") == k.job("job_a") and k.owner("batch:b") == k.batch("b")


async def new_job(svc: Services, batch_id: str = "") -> Job:
    job = outcomes.new_job(
        svc.settings,
        "t1",
        {"model": "sim-model", "input": "hi"},
        now=1_000.0,
        webhook_url="http://hook.example/x",
        webhook_secret="whsec_x",
        batch_id=batch_id,
    )
    ok, _ = await svc.store.create_job(job, lane=lane_of("t1", batch_id or None))
    assert ok
    fresh = await svc.store.get_job(job.id)
    assert fresh is not None
    return fresh


async def zscore(svc: Services, key: str, member: str) -> float | None:
    score = await svc.redis.zscore(key, member)
    return None if score is None else float(score)


async def counts(svc: Services, key: str | None = None) -> dict[str, int]:
    raw = await svc.redis.hgetall(key or svc.store.keys.counts)  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items() if int(v)}


def event_for(job: Job) -> Event:
    return hand_event(job, EventState.pending)


async def test_a_job_through_every_transition(svc: Services) -> None:
    job = await created_and_dispatched(svc)
    job = await started(svc, job)
    job, ev = await paused_and_resumed(svc, job)
    await finished_and_purged(svc, job, ev)


async def created_and_dispatched(svc: Services) -> Job:
    k = svc.store.keys
    job = await new_job(svc)
    assert await counts(svc) == {"queued": 1}
    assert await zscore(svc, k.tenant_status("t1", "queued"), job.id) is not None
    assert await svc.redis.lrange(k.ready("t1|-"), 0, -1) == [job.id.encode()]  # type: ignore[misc]

    assert await Dispatcher(svc).move("t1|-", [(job.id, True)], "sim-model") == 1
    assert await svc.redis.exists(k.arq_job(f"submit:{job.id}"))
    assert await zscore(svc, k.inflight("sim-model"), job.id) is not None
    assert not await svc.redis.exists(k.lanes)
    return job


async def started(svc: Services, job: Job) -> Job:
    k, store = svc.store.keys, svc.store
    started = await store.start(
        job, {"interaction_id": "i1", "interaction_ids": ["i1"]}, poll_at=2.0
    )
    job = await store.get_job(job.id) or job
    assert started.ok
    assert job.status == JobStatus.running and job.interaction_id == "i1"
    assert await zscore(svc, k.polls, job.id) == 2000
    assert await counts(svc) == {"running": 1}
    # a second answer to the same create finds the interaction id moved on
    again = await store.start(
        Job.from_redis({**job.to_redis(), "interaction_id": ""}), {}, poll_at=3.0
    )
    assert not again.ok and again.previous == "running"
    return job


async def paused_and_resumed(svc: Services, job: Job) -> tuple[Job, Event]:
    k, store = svc.store.keys, svc.store
    ev = event_for(job)
    assert (await store.pause(job, {"pending_calls": [{"id": "c"}]}, ev, poll_at=9.0)).ok
    job = await store.get_job(job.id) or job
    assert job.status == JobStatus.requires_action and job.pending_calls == [{"id": "c"}]
    assert await zscore(svc, k.inflight("sim-model"), job.id) is None
    assert not await svc.redis.sismember(k.models, "sim-model")  # type: ignore[misc]
    assert await zscore(svc, k.polls, job.id) == 9000
    assert await zscore(svc, k.deliveries, ev.id) is not None
    assert await store.job_event_ids(job.id) == [ev.id]

    step = outcomes.submit_step(job.id, n=1)
    assert (await store.resume(job, JobStatus.requires_action, {"pending_calls": None}, step)).ok
    job = await store.get_job(job.id) or job
    assert job.status == JobStatus.running and job.pending_calls is None
    assert await zscore(svc, k.inflight("sim-model"), job.id) is not None  # in flight again
    assert await zscore(svc, k.polls, job.id) is None
    assert await svc.redis.exists(k.arq_job(f"submit:{job.id}:1"))
    return job, ev


async def finished_and_purged(svc: Services, job: Job, ev: Event) -> None:
    k, store = svc.store.keys, svc.store
    wrong = await store.finish(
        job,
        JobStatus.completed,
        expect=JobStatus.queued,
        changes={},
        event=event_for(job),
        batch_step=None,
    )
    assert not wrong.ok and wrong.previous == "running"
    end = event_for(job)
    done = await store.finish(
        job,
        JobStatus.completed,
        expect=JobStatus.running,
        changes={"finished_at": 5.0, "usage": {"total_tokens": 3}},
        event=end,
        batch_step=None,
    )
    assert done.ok
    job = await store.get_job(job.id) or job
    assert job.status == JobStatus.completed and job.usage == {"total_tokens": 3}
    assert await counts(svc) == {"completed": 1}
    assert await zscore(svc, k.tenant_status("t1", "completed"), job.id) is not None
    assert await zscore(svc, k.tenant_status("t1", "running"), job.id) is None
    assert await zscore(svc, k.inflight("sim-model"), job.id) is None
    assert await zscore(svc, k.expiring_jobs, job.id) is not None
    assert await store.job_event_ids(job.id) == [ev.id, end.id]

    assert await purge.purge_jobs(svc, [job.id]) == 1
    left = {x.decode() for x in await svc.redis.keys("*")}
    assert left == {k.seq, k.counts}, left  # created once, by the first job
    assert await counts(svc) == {}
    assert await purge.purge_jobs(svc, [job.id]) == 0


async def test_the_last_job_of_a_batch_queues_batch_done(svc: Services) -> None:
    k, store = svc.store.keys, svc.store
    await svc.redis.hset(k.batch("b1"), mapping={"id": "b1", "total": "2", "done": "0"})  # type: ignore[misc]
    await svc.redis.hset(k.batch_counts("b1"), "queued", "2")  # type: ignore[misc]
    jobs = [await new_job(svc, batch_id="b1") for _ in range(2)]
    assert await svc.redis.lrange(k.batch_jobs("b1"), 0, -1) == [j.id.encode() for j in jobs]  # type: ignore[misc]
    for n, job in enumerate(jobs):
        out = await store.finish(
            job,
            JobStatus.cancelled,
            expect=JobStatus.queued,
            changes={},
            event=event_for(job),
            batch_step=outcomes.batch_done_step("b1"),
        )
        assert out.ok
        queued = await svc.redis.exists(k.arq_job("batch_done:b1"))
        assert bool(queued) == (n == 1)
    assert await counts(svc, k.batch_counts("b1")) == {"cancelled": 2}
    assert await zscore(svc, k.expiring_batches, "b1") is not None
    assert await svc.redis.zcard(k.expiring_jobs) == 0  # a batch's jobs live with it


async def test_a_purge_that_read_a_changing_record_writes_nothing(svc: Services) -> None:
    store = svc.store
    job = await new_job(svc)
    (spec,) = await purge.read_jobs(svc, [job.id])
    ev = event_for(job)
    assert (
        await store.finish(
            job,
            JobStatus.cancelled,
            expect=JobStatus.queued,
            changes={},
            event=ev,
            batch_step=None,
        )
    ).ok
    keys, args = purge.job_plan(store.keys, spec, "")
    assert await purge._scripts(svc)["purge_job"](keys=keys, args=args) == -1
    assert await store.get_job(job.id) is not None and await store.get_event(ev.id) is not None
    assert await purge.purge_jobs(svc, [job.id]) == 1  # read again: gone, event and all
    assert await store.get_event(ev.id) is None
