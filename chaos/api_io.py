"""Talking to the service under test: submitting every job (single POSTs and one
batch), and reading every job and event back afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis

from chaos.config import KEYS, Plan


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
