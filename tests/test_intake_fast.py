"""The fast create path keeps what the slow one did: creates sent together in
one pipeline (``jobs/storage/coalesce.py``) are each their own script call,
with their own answer and error; the record travels as one JSON argument and
is stored field for field; the 202 is the job as stored (as GET shows it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import ResponseError

from jobs.domain import lifecycle
from jobs.domain.records import Job
from jobs.http.views import job_view
from jobs.services import Services
from jobs.settings import Settings
from jobs.storage.coalesce import Coalescer
from jobs.storage.keys import lane_of


@pytest.fixture()
async def svc(clean_redis: str, tmp_path: Path) -> AsyncIterator[Services]:
    s = Services.open(Settings(redis_url=clean_redis, results_url=f"file://{tmp_path}"))
    yield s
    await s.close()


def a_job(svc: Services, text: str = "hi", **kw: Any) -> Job:
    return lifecycle.new_job(
        svc.settings, "t1", {"model": "sim-model", "input": text}, now=1_000.123456, **kw
    )


async def test_concurrent_creates_each_get_their_own_answer(svc: Services) -> None:
    jobs = [a_job(svc, f"job {i}") for i in range(200)]
    lane = lane_of("t1", None)
    key = "k" * 64  # one Idempotency-Key (its digest) for the last two jobs
    idems: list[tuple[str, str] | None] = [None] * 198
    idems += [(key, f"{jobs[198].id}|d"), (key, f"{jobs[199].id}|d")]
    answers = await asyncio.gather(
        *(svc.store.create_job(j, lane=lane, idem=i) for j, i in zip(jobs, idems, strict=True))
    )
    assert all(ok for ok, _ in answers[:199])
    assert answers[199] == (False, f"{jobs[198].id}|d")  # the key's first job, as before
    seqs = {int(seq) for _, seq in answers[:199]}
    assert len(seqs) == 199
    assert await svc.redis.llen(svc.store.keys.ready(lane)) == 199
    stored = await svc.store.get_jobs([j.id for j in jobs[:199]])
    assert [s.id if s else None for s in stored] == [j.id for j in jobs[:199]]


async def test_the_record_is_stored_field_for_field(svc: Services) -> None:
    meta = {"ü": "naïve ☃ \U0001f600", "q": 'a "quote" \\ and\nnewline', "n": [1, 2.5, None]}
    job = a_job(svc, "héllo \u2028 \U0001f680", metadata=meta, custom_id="c-ü")
    ok, seq = await svc.store.create_job(job, lane=lane_of("t1", None))
    assert ok
    raw = await svc.redis.hgetall(svc.store.keys.job(job.id))
    got = {k.decode(): v.decode() for k, v in raw.items()}
    assert got == {**job.to_redis(), "seq": seq}
    assert Job.from_redis(raw).metadata == meta


async def test_a_flushed_script_cache_is_reloaded(svc: Services) -> None:
    await svc.store.create_job(a_job(svc), lane=lane_of("t1", None))
    await svc.redis.script_flush()
    answers = await asyncio.gather(
        *(svc.store.create_job(a_job(svc), lane=lane_of("t1", None)) for _ in range(5))
    )
    assert all(ok for ok, _ in answers)


async def test_a_script_error_is_raised_to_its_own_call_only(svc: Services) -> None:
    script = svc.redis.register_script(
        "if ARGV[1] == 'bad' then return redis.error_reply('ERR refused') end return ARGV[1]"
    )
    c = Coalescer(svc.redis, script)
    args = ["a", "bad", "b", "c"]
    out = await asyncio.gather(*(c.call([], [a]) for a in args), return_exceptions=True)
    assert out[0] == b"a" and out[2] == b"b" and out[3] == b"c"
    assert isinstance(out[1], ResponseError)
    assert await c.call([], ["alone"]) == b"alone"


async def test_a_new_job_is_its_own_stored_form(svc: Services) -> None:
    job = a_job(svc, metadata={"x": 1.5}, timeout_s=12.3456)
    assert job.created_at == 1_000.123
    assert job_view(job) == job_view(Job.from_redis(job.to_redis()))


async def test_the_202_is_the_job_as_get_shows_it(api: httpx.AsyncClient) -> None:
    body = {
        "interaction": {"model": "sim-model", "input": "hi ü"},
        "metadata": {"k": [1, 2.5, "ß"]},
        "custom_id": "c1",
        "timeout_s": 100.0001,
        "webhook": {"url": "https://93.184.215.14/hook"},
    }
    posts = await asyncio.gather(
        *(api.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"k{i}"}) for i in range(8))
    )
    for r in posts:
        assert r.status_code == 202, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-webhook-secret"].startswith("whsec_")
        got = await api.get(f"/v1/jobs/{r.json()['id']}")
        assert got.json() == r.json()
    again = await api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k0"})
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == posts[0].json()
    assert "x-webhook-secret" not in again.headers
    other = await api.post(
        "/v1/jobs", json={**body, "custom_id": "c2"}, headers={"Idempotency-Key": "k0"}
    )
    assert other.status_code == 422


def test_the_access_log_is_off_by_default() -> None:
    assert Settings().access_log is False
    assert Settings(access_log=True).access_log is True


@pytest.mark.parametrize(
    "body",
    [
        {"interaction": {"model": "m", "input": "x"}},
        {
            "interaction": {"agent": "a", "input": [{"type": "text", "text": "ü"}], "z": {"b": 1}},
            "webhook": {
                "url": "https://93.184.215.14:8443/h?q=1#f",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            },
            "metadata": {"b": [1, 2.5, None, True], "a": "ß"},
            "timeout_s": 3600,
            "custom_id": "c",
        },
        {"interaction": {"model": "m", "input": "x"}, "webhook": {"url": "http://Hook.Example"}},
    ],
)
def test_the_idempotency_digest_covers_the_body_as_before(body: dict[str, Any]) -> None:
    import json

    from jobs.domain.requests import JobCreate
    from jobs.http.routes import jobs

    parsed = JobCreate.model_validate(body)
    assert tuple(JobCreate.model_fields) == jobs.CANONICAL_FIELDS  # a new field: add it there
    before = json.dumps(parsed.model_dump(mode="json"), sort_keys=True)
    assert jobs.canonical(parsed) == before
