"""Batches read as a stream and written in chunks under a commit protocol
(``jobs/domain/batch_lines.py``, ``jobs/storage/batch_write.py``): a batch
whose write fails midway, or whose writer died, leaves nothing dispatchable
and nothing in the tenant's listing or counts; lines split anywhere by the
transport still number right; a line nested too deep is a 422."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs.domain import batch_ingest
from jobs.domain.batch_ingest import Ingest
from jobs.domain.batch_lines import FRAME
from jobs.domain.records import Batch
from jobs.services import Services
from jobs.settings import Settings
from jobs.storage import batch_write
from jobs.storage.keys import lane_of
from jobs.work import retention
from jobs.work.dispatch import Dispatcher
from tests.helpers import running_worker, wait_until

NDJSON = {"content-type": "application/x-ndjson"}
TENANT = "default"


def line(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": f"c-{i}",
        "interaction": {"model": "sim-model", "input": f"item {i} [sim duration=0.1]"},
        **extra,
    }


def ndjson(rows: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


@pytest.fixture()
async def svc(settings: Settings) -> AsyncIterator[Services]:
    s = Services.open(settings)
    yield s
    await s.close()


async def leftovers(svc: Services) -> dict[str, Any]:
    """Everything a batch's jobs could leave behind, as plain values."""
    r, k = svc.redis, svc.store.keys
    counts = {key.decode(): int(v) for key, v in (await r.hgetall(k.counts)).items()}  # type: ignore[misc]
    return {
        "jobs": await r.keys(k.prefix + ":job:*"),
        "batches": await r.keys(k.prefix + ":batch:*"),
        "lanes": await r.smembers(k.lanes),  # type: ignore[misc]
        "ready": await r.keys(k.prefix + ":ready:*"),
        "counts": {s: n for s, n in counts.items() if n},
        "tenant_jobs": await r.zcard(k.tenant_jobs(TENANT)),
        "tenant_queued": await r.zcard(k.tenant_status(TENANT, "queued")),
        "expiring": await r.zcard(k.expiring_batches),
        "arq_queue": await r.zcard(k.queue),
    }


NOTHING = {
    "jobs": [],
    "batches": [],
    "lanes": set(),
    "ready": [],
    "counts": {},
    "tenant_jobs": 0,
    "tenant_queued": 0,
    "expiring": 0,
    "arq_queue": 0,
}


async def test_a_write_that_fails_midway_leaves_nothing(
    api: httpx.AsyncClient, svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch_write.StagedBatch.write
    calls = 0
    seen_while_staged: dict[str, Any] = {}
    monkeypatch.setattr(batch_ingest, "WRITE_GROUP", 1)  # one frame per write

    async def failing(self: batch_write.StagedBatch, frames: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the third frame
            # two frames are in Redis: the dispatcher must not move any of them
            await Dispatcher(svc).pass_once()
            seen_while_staged.update(await leftovers(svc))
            raise RedisConnectionError("injected: the connection dropped mid-batch")
        await real(self, frames)

    monkeypatch.setattr(batch_write.StagedBatch, "write", failing)
    rows = ndjson([line(i) for i in range(1200)])
    r = await api.post("/v1/batches", content=rows, headers=NDJSON)
    assert r.status_code == 503, r.text
    assert seen_while_staged["tenant_queued"] == 2 * FRAME  # written, staged ...
    assert seen_while_staged["arq_queue"] == 0  # ... and not dispatched
    listed = (await api.get("/v1/jobs")).json()["data"]
    assert listed == []
    assert await leftovers(svc) == NOTHING


async def test_a_batch_whose_writer_died_is_swept_and_never_dispatched(
    api: httpx.AsyncClient, svc: Services
) -> None:
    # what an API killed mid-write leaves: a staged record and some of the jobs
    intake = Ingest(svc, TENANT).intake
    frames = intake.feed(ndjson([line(i) for i in range(600)]), final=True)
    frames += intake.finish()
    assert [len(f) for f in frames] == [FRAME, FRAME, 600 - 2 * FRAME]
    batch = Batch(id=intake.batch_id, tenant=TENANT, total=0, created_at=intake.now)
    staged = batch_write.StagedBatch(svc, batch)
    await staged.stage()
    await staged.write(frames[:2])
    assert (await api.get(f"/v1/batches/{batch.id}")).status_code == 404
    assert (await api.get("/v1/jobs", params={"batch_id": batch.id})).status_code == 404
    assert await Dispatcher(svc).pass_once() is not None
    assert await svc.redis.zcard(svc.store.keys.queue) == 0
    assert lane_of(TENANT, batch.id).encode() in await svc.redis.smembers(svc.store.keys.lanes)  # type: ignore[misc]

    # the retention sweeper takes it once its staging lease has run out
    later = time.time() + batch_write.STAGE_S + 1
    while await retention.sweep_once(svc, now=later) == 0.0:
        pass
    assert await leftovers(svc) == NOTHING
    # and the writer, were it to come back, can neither renew nor commit
    with pytest.raises(batch_write.Abandoned):
        await staged.renew()
    with pytest.raises(batch_write.Abandoned):
        await staged.commit()


async def test_a_committed_batch_runs_to_completion(
    api: httpx.AsyncClient, settings: Settings, svc: Services
) -> None:
    n = FRAME + 10  # two frames: the write and the commit across more than one pipeline
    r = await api.post("/v1/batches", content=ndjson([line(i) for i in range(n)]), headers=NDJSON)
    assert r.status_code == 202, r.text
    view = r.json()
    assert view["total"] == n and view["counts"]["queued"] == n and view["status"] == "in_progress"
    assert await svc.redis.zcard(svc.store.keys.expiring_batches) == 0  # no cleanup pending
    async with running_worker(settings):

        async def finished() -> dict[str, Any] | None:
            b = (await api.get(f"/v1/batches/{view['id']}")).json()
            return b if b["status"] == "completed" else None

        done = await wait_until(finished, timeout=240, what="batch completed")
    assert done["counts"]["completed"] == n and done["done"] == n
    res = await api.get(f"/v1/batches/{view['id']}/results")
    assert [json.loads(x)["custom_id"] for x in res.text.splitlines()] == [
        f"c-{i}" for i in range(n)
    ]


async def test_lines_split_anywhere_by_the_transport(api: httpx.AsyncClient) -> None:
    rows = [json.dumps(line(i)).encode() for i in range(40)]
    body = b"\r\n".join(rows[:10]) + b"\r\n\n" + b"\r".join(rows[10:20]) + b"\n"
    body += b"\n".join(rows[20:]) + b"\n" + b"{broken"  # last line: no newline, not JSON

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7):  # mid-line, mid-"\r\n"
            yield body[i : i + 7]

    r = await api.post("/v1/batches", content=pieces(), headers=NDJSON)
    assert r.status_code == 422, r.text
    [bad] = r.json()["error"]["lines"]
    assert bad["line"] == 42  # 10 lines, a blank one, 10 + 20 more, then the broken one
    assert r.json()["error"]["message"].startswith("1 of 41 lines")
    good = body[: body.rindex(b"\n") + 1]
    r = await api.post("/v1/batches", content=good, headers=NDJSON)
    assert r.status_code == 202 and r.json()["total"] == 40


async def test_a_line_nested_too_deep_is_refused_by_number(
    api: httpx.AsyncClient, svc: Services
) -> None:
    inter = json.dumps({"model": "sim-model", "input": "x"})

    def nested(depth: int) -> bytes:
        meta = "[" * depth + "]" * depth
        return f'{{"custom_id": "deep", "interaction": {inter}, "metadata": {meta}}}'.encode()

    # 995 levels: the 500 (RecursionError) this was; 100,000: past the JSON parser's own limit
    rows: list[Any] = [line(1), nested(995), line(3), nested(100_000), nested(90)]
    r = await api.post("/v1/batches", content=ndjson(rows), headers=NDJSON)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_batch"
    assert [x["line"] for x in err["lines"]] == [2, 4, 5]
    assert all("nested deeper than 100 levels" in x["error"] for x in err["lines"][:2])
    assert "metadata is nested more than 32 levels" in err["lines"][2]["error"]  # as a job's
    body = b'{"jobs": [' + json.dumps(line(1)).encode() + b", " + nested(150) + b"]}"
    r = await api.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert [x["line"] for x in r.json()["error"]["lines"]] == [2]
    assert await leftovers(svc) == NOTHING


async def test_too_many_lines_are_counted_not_checked(settings: Settings, tmp_path: Path) -> None:
    from tests.helpers import app_client

    async with app_client(settings.model_copy(update={"max_batch_jobs": 10})) as client:
        rows = [line(i) for i in range(12)]
        r = await client.post("/v1/batches", content=ndjson(rows), headers=NDJSON)
        assert r.status_code == 422
        assert "at most 10 jobs; this one has 12" in r.json()["error"]["message"]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak) of a process, from /proc, in kB."""
    out = {}
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = row.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def test_a_200_mb_batch_costs_the_api_less_than_twice_its_size(stack: Any) -> None:
    """The API as a real process (``interq api``): its peak resident set grows
    by less than twice the body, and what it took is given back. A memory
    bound, not a timing one."""
    n, size = 50_000, 200_000_000
    pad = "x" * (size // n - 120)
    rows = [line(i, metadata=None) for i in range(n)]
    for r in rows:
        r["interaction"]["input"] += pad
    body = ndjson(rows)
    del rows
    assert len(body) >= size
    stack.start_api()
    pid = stack.proc("api").pid
    with httpx.Client(base_url=stack.api_url, timeout=900) as c:
        c.post("/v1/batches", content=ndjson([line(i) for i in range(100)]), headers=NDJSON)
        before = memory_kb(pid)
        r = c.post("/v1/batches", content=body, headers=NDJSON)
        assert r.status_code == 202, r.text[:500]
        assert r.json()["total"] == n
        after = memory_kb(pid)
    grown = after["VmHWM"] - before["VmRSS"]
    assert grown * 1024 <= 2 * len(body), (before, after)
    assert (after["VmRSS"] - before["VmRSS"]) * 1024 <= len(body) // 2, (before, after)


async def test_a_bad_last_line_purges_the_jobs_written_before_it(
    api: httpx.AsyncClient, svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the jobs of the lines before are written while later lines are checked:
    # a bad line found after frames went to Redis still leaves nothing
    monkeypatch.setattr(batch_ingest, "WRITE_GROUP", 1)
    written: list[int] = []
    real = batch_write.StagedBatch.write

    async def counting(self: batch_write.StagedBatch, frames: Any) -> None:
        await real(self, frames)
        written.append(self.written)

    monkeypatch.setattr(batch_write.StagedBatch, "write", counting)
    rows: list[Any] = [line(i) for i in range(3 * FRAME)] + [b'{"custom_id": "bad"']

    async def slowly() -> AsyncIterator[bytes]:  # one line at a time, as a slow client sends
        for row in ndjson(rows).splitlines(keepends=True):
            yield row

    monkeypatch.setattr("jobs.http.routes.batches.READ_CHUNK", 4096)
    r = await api.post("/v1/batches", content=slowly(), headers=NDJSON)
    assert r.status_code == 422, r.text
    assert [x["line"] for x in r.json()["error"]["lines"]] == [3 * FRAME + 1]
    assert written and written[-1] >= FRAME  # some jobs were in Redis before the refusal
    assert await leftovers(svc) == NOTHING


async def test_numbers_json_reads_and_orjson_would_not_stay_exact(
    api: httpx.AsyncClient, svc: Services
) -> None:
    big = 123456789012345678901234567890  # past 64 bits: orjson would make it a float
    rows = [line(1, metadata={"n": big, "f": 0.1}), line(2, metadata={"x": 1e300})]
    r = await api.post("/v1/batches", content=ndjson(rows), headers=NDJSON)
    assert r.status_code == 202, r.text
    got = (await api.get("/v1/jobs", params={"batch_id": r.json()["id"]})).json()["data"]
    metas = {j["custom_id"]: j["metadata"] for j in got}
    assert metas == {"c-1": {"n": big, "f": 0.1}, "c-2": {"x": 1e300}}
    # NaN, an overflow to Infinity and a lone surrogate: refused by line, as before
    head = b'"interaction": {"model": "m", "input": "x"}'
    bad = [b'{"custom_id": "a", ' + head + b', "metadata": NaN}']
    bad.append(b'{"custom_id": "b", ' + head + b', "metadata": 1e400}')
    bad.append(b'{"custom_id": "c", "interaction": {"model": "m", "input": "\\ud800"}}')
    r = await api.post("/v1/batches", content=ndjson(bad), headers=NDJSON)
    assert r.status_code == 422, r.text
    errors = [x["error"] for x in r.json()["error"]["lines"]]
    assert "nan is not a JSON number" in errors[0] and "inf is not a JSON number" in errors[1]
    assert "lone surrogate" in errors[2]
