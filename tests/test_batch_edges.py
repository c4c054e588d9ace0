"""The edges of a batch's intake: a JSON body over its own limit, an NDJSON
batch's metadata in a header, and a writer that keeps its staging lease
through a client that pauses, a slow DNS lookup, or Redis losing its scripts
(``jobs/domain/batch_ingest.py``, ``jobs/storage/batch_write.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jobs.domain import batch_ingest
from jobs.domain.batch_lines import FRAME
from jobs.services import Services
from jobs.settings import Settings
from jobs.storage import batch_write
from jobs.work import retention
from tests.helpers import wait_until
from tests.test_batch_stream import NDJSON, NOTHING, leftovers, line, ndjson
from tests.test_batch_stream import svc as svc  # the fixture


async def test_a_json_batch_over_its_own_limit_is_413_and_ndjson_takes_it(
    settings: Settings, svc: Services
) -> None:
    from tests.helpers import app_client

    rows = [line(i) for i in range(300)]
    body = json.dumps({"jobs": rows}).encode()
    small = settings.model_copy(update={"max_json_batch_bytes": len(body) - 1})
    json_type = {"content-type": "application/json"}

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    async with app_client(small) as api:
        for content in (body, chunked()):
            r = await api.post("/v1/batches", content=content, headers=json_type)
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "body_too_large"
            assert "NDJSON" in r.json()["error"]["message"]
        assert await leftovers(svc) == NOTHING
        r = await api.post("/v1/batches", content=ndjson(rows), headers=NDJSON)
        assert r.status_code == 202 and r.json()["total"] == 300
        fits = settings.model_copy(update={"max_json_batch_bytes": len(body)})
    async with app_client(fits) as api:
        r = await api.post("/v1/batches", content=body, headers=json_type)
        assert r.status_code == 202 and r.json()["total"] == 300


async def test_an_ndjson_batch_carries_its_metadata_in_a_header(
    api: httpx.AsyncClient, svc: Services
) -> None:
    rows = ndjson([line(i) for i in range(3)])
    meta = {"run": 7, "by": "Zo\u00eb", "tags": ["a", "b"]}
    headers = {**NDJSON, "X-Batch-Metadata": json.dumps(meta)}
    r = await api.post("/v1/batches", content=rows, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["metadata"] == meta
    assert (await api.get(f"/v1/batches/{r.json()['id']}")).json()["metadata"] == meta
    before = await leftovers(svc)
    bad = {
        "not JSON": "{run: 7",
        "NaN": '{"x": NaN}',
        "too deep": "[" * 40 + "]" * 40,
        "too deep for the parser": "[" * 100_000 + "]" * 100_000,
        "too large": json.dumps({"x": "y" * 20_000}),
    }
    for what, value in bad.items():
        r = await api.post(
            "/v1/batches", content=rows, headers={**NDJSON, "X-Batch-Metadata": value}
        )
        assert r.status_code == 422, (what, r.text)
        assert r.json()["error"]["message"].startswith("X-Batch-Metadata"), (what, r.text)
    body = json.dumps({"jobs": [line(1)]}).encode()
    headers = {"content-type": "application/json", "X-Batch-Metadata": "{}"}
    r = await api.post("/v1/batches", content=body, headers=headers)
    assert r.status_code == 422 and "a JSON body has 'metadata'" in r.text
    assert await leftovers(svc) == before  # nothing more stored


async def sweep_between_leases(svc: Services) -> float:
    """Once the staged batch's lease has been renewed, a sweep at a time past
    its first deadline and before the renewed one: what a sweeper would do
    to a writer that did not renew. Returns the sweep's answer."""
    key = svc.store.keys.expiring_batches

    async def staged() -> Any:
        return await svc.redis.zrange(key, 0, -1, withscores=True)

    [(batch_id, first)] = await wait_until(staged, timeout=10, what="the batch staged")

    async def renewed() -> float | None:
        score = await svc.redis.zscore(key, batch_id)
        return score if score is not None and score > first + 20 else None

    later = await wait_until(renewed, timeout=10, what="the staging lease renewed")
    return await retention.sweep_once(svc, now=(first + later) / 2000)


async def test_a_client_that_pauses_mid_batch_keeps_its_lease(
    api: httpx.AsyncClient, svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a batch streamed from a slow generator: its first frames are staged in
    # Redis while the rest has not been sent; the writer renews its lease while
    # it waits, so the sweeper does not take the batch from under it
    monkeypatch.setattr(batch_write, "RENEW_S", 0.05)
    monkeypatch.setattr(batch_ingest, "RENEW_S", 0.05)
    monkeypatch.setattr("jobs.http.routes.batches.READ_CHUNK", 4096)
    rows = ndjson([line(i) for i in range(2 * FRAME)]).splitlines(keepends=True)
    swept: list[float] = []
    seen_while_staged: list[Any] = []

    async def slow_client() -> AsyncIterator[bytes]:
        for row in rows[:FRAME]:
            yield row
        jobs_key = svc.store.keys.tenant_jobs("default")
        while await svc.redis.zcard(jobs_key) < FRAME:  # written as the next chunk is read
            yield b"\n"
        # jobs of the batch are in Redis (staged), but not in the tenant's listing
        seen_while_staged.append((await api.get("/v1/jobs")).json()["data"])
        swept.append(await sweep_between_leases(svc))  # the client thinks meanwhile
        for row in rows[FRAME:]:
            yield row

    r = await api.post("/v1/batches", content=slow_client(), headers=NDJSON)
    assert swept, "no sweep ran: the lease was not renewed while the writer waited"
    assert r.status_code == 202, r.text
    assert r.json()["total"] == 2 * FRAME and r.json()["counts"]["queued"] == 2 * FRAME
    assert seen_while_staged == [[]]
    listed = (await api.get("/v1/jobs", params={"limit": 1000})).json()["data"]
    assert len(listed) == 2 * FRAME  # committed: listed


async def test_a_slow_webhook_lookup_after_the_last_line_keeps_the_lease(
    settings: Settings, svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the per-line webhook hosts are resolved after the last line, while the
    # last frames are written: the writer still renews the staging lease
    from api import create_app
    from jobs.delivery.signing import generate_secret

    monkeypatch.setattr(batch_write, "RENEW_S", 0.05)
    monkeypatch.setattr(batch_ingest, "RENEW_S", 0.05)
    swept: list[float] = []

    async def slow_dns(host: str, port: int) -> list[str]:
        swept.append(await sweep_between_leases(svc))  # a resolver slower than the lease
        return ["93.184.216.34"]

    hook = {"url": "https://hooks.example/h", "secret": generate_secret()}
    rows = ndjson([{**line(i), "webhook": hook} for i in range(FRAME + 1)])
    app = create_app(settings.model_copy(update={"webhook_allow_private": False}))
    async with app.router.lifespan_context(app):
        app.state.svc.resolver = slow_dns
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as api:
            r = await api.post("/v1/batches", content=rows, headers=NDJSON)
    assert swept, "no sweep ran: the lease was not renewed during the lookup"
    assert r.status_code == 202, r.text
    assert r.json()["total"] == FRAME + 1


async def test_a_batch_written_after_redis_lost_its_scripts_is_accepted(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch_write.StagedBatch.stage

    async def stage_then_flush(self: batch_write.StagedBatch) -> None:
        await real(self)
        await self.svc.redis.script_flush()  # as a restart or an operator would

    monkeypatch.setattr(batch_write.StagedBatch, "stage", stage_then_flush)
    r = await api.post(
        "/v1/batches", content=ndjson([line(i) for i in range(FRAME + 1)]), headers=NDJSON
    )
    assert r.status_code == 202, r.text
    assert r.json()["total"] == FRAME + 1 and r.json()["counts"]["queued"] == FRAME + 1
