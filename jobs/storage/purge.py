"""Purging in Redis: a job and everything of its own, or a batch's own keys
(``lua/purge_job.lua``, ``lua/purge_batch.lua``); ``retention.py`` decides
when, and deletes the stored files first.

A script is told every key it touches, and what a job owns depends on its
record: its tenant and status (its index entries), its model (its in-flight
entry), its interactions (their ``iid`` mappings and arq steps), its events
(their logs, dead-letter entries and arq steps, one per redelivery) and its
Idempotency-Key. So a purge reads the records first (two pipelined round
trips per chunk), names the keys from what it read, and hands that reading to
the script, which checks it against the record and writes nothing if it
changed meanwhile (a job still finishing): that job is read again and retried.
"""

from __future__ import annotations

import json
from typing import Any

from redis.commands.core import AsyncScript

from jobs.services import Services
from jobs.storage.keys import Keys, lane_of
from jobs.storage.scripts import register

MAX_TRIES = 10  # reads of one record that kept changing before a purge gives up
JOB_FIELDS = ("status", "tenant", "model", "idem_key", "interaction_ids")


def _s(v: Any) -> str:
    return "" if v is None else v.decode() if isinstance(v, bytes) else str(v)


def _scripts(svc: Services) -> dict[str, AsyncScript]:
    found = svc.cache.get("purge")
    if not isinstance(found, dict):
        found = register(svc.redis, "purge_job", "purge_batch")
        svc.cache["purge"] = found
    return found


class Plan:
    """One purge script call: its keys, and what was read (its ARGV[1])."""

    def __init__(self, keys: Keys, spec: dict[str, Any]) -> None:
        self.k = keys
        self.spec = spec
        self.keys: list[str] = []
        self.steps: list[str] = []  # arq step ids

    def events(self) -> None:
        """Each event's record, log and dead-letter entry, and its deliver steps."""
        k, spec = self.k, self.spec
        for eid, tenant, again in zip(
            spec["events"], spec["ev_tenants"], spec["ev_redeliveries"], strict=True
        ):
            self.keys += [k.event(eid), k.event_attempts(eid)]
            if tenant:
                self.keys.append(k.deadletter(tenant))
            self.steps.append(f"deliver:{eid}")
            self.steps += [f"deliver:{eid}:r{n}" for n in range(1, _count(again) + 1)]

    def done(self) -> tuple[list[str], list[str]]:
        self.spec["steps"] = self.steps
        for step in self.steps:
            self.keys += [self.k.arq_job(step), self.k.arq_retry(step)]
        return self.keys, [json.dumps(self.spec)]


def _count(raw: str) -> int:
    return int(raw) if raw.isdigit() else 0


async def _read_events(svc: Services, specs: list[dict[str, Any]]) -> None:
    """Fill in each spec's events' tenant and redeliveries, one round trip."""
    keys = svc.store.keys
    async with svc.redis.pipeline(transaction=False) as pipe:
        for spec in specs:
            for eid in spec["events"]:
                pipe.hmget(keys.event(eid), ["tenant", "redeliveries"])
        rows = iter(await pipe.execute())
    for spec in specs:
        marks = [[_s(v) for v in next(rows)] for _ in spec["events"]]
        spec["ev_tenants"] = [m[0] for m in marks]
        spec["ev_redeliveries"] = [m[1] for m in marks]


async def read_jobs(svc: Services, job_ids: list[str]) -> list[dict[str, Any]]:
    keys = svc.store.keys
    async with svc.redis.pipeline(transaction=False) as pipe:
        for jid in job_ids:
            pipe.hmget(keys.job(jid), list(JOB_FIELDS))
            pipe.lrange(keys.job_events(jid), 0, -1)
        raw = await pipe.execute()
    specs = []
    for i, jid in enumerate(job_ids):
        spec: dict[str, Any] = {"id": jid}
        spec.update(zip(JOB_FIELDS, (_s(v) for v in raw[2 * i]), strict=True))
        spec["iids"] = spec.pop("interaction_ids")
        spec["events"] = [_s(e) for e in raw[2 * i + 1]]
        specs.append(spec)
    await _read_events(svc, specs)
    return specs


def job_plan(keys: Keys, spec: dict[str, Any], batch_list: str) -> tuple[list[str], list[str]]:
    """The keys (in ``purge_job.lua``'s order) and ARGV of one job's purge."""
    jid = spec["id"]
    plan = Plan(keys, spec)
    plan.keys = [keys.job(jid), keys.job_events(jid), keys.polls, keys.expiring_jobs]
    plan.keys += [keys.deliveries, keys.queue, keys.job_changes(jid)]
    spec["list"] = bool(batch_list)
    if batch_list:
        plan.keys.append(batch_list)
    plan.steps.append(f"submit:{jid}")
    if spec["status"]:
        tenant = spec["tenant"]
        plan.keys += [keys.counts, keys.tenant_jobs(tenant)]
        plan.keys += [keys.tenant_status(tenant, spec["status"])]
        plan.keys += [keys.inflight(spec["model"]), keys.models]
        if spec["idem_key"]:
            plan.keys.append(spec["idem_key"])  # the key's name, as the record keeps it
        for n, iid in enumerate(json.loads(spec["iids"]) if spec["iids"] else [], start=1):
            plan.keys.append(keys.iid(iid))
            plan.steps += [f"poll:{jid}:{iid}", f"poll:{jid}:{iid}:deadline", f"submit:{jid}:{n}"]
    plan.events()
    return plan.done()


async def purge_jobs(svc: Services, job_ids: list[str], batch_list: str = "") -> int:
    """Delete these jobs' keys, one script call each, pipelined. ``batch_list``:
    the batch's job list, whose head these ids are (each popped when it is
    the head). Returns how many existed."""
    script = _scripts(svc)["purge_job"]
    existed, pending = 0, job_ids
    for _ in range(MAX_TRIES):
        specs = await read_jobs(svc, pending)
        async with svc.redis.pipeline(transaction=False) as pipe:
            for spec in specs:
                keys, args = job_plan(svc.store.keys, spec, batch_list)
                await script(keys=keys, args=args, client=pipe)
            results = [int(r) for r in await pipe.execute()]
        existed += sum(r for r in results if r > 0)
        pending = [s["id"] for s, r in zip(specs, results, strict=True) if r < 0]
        if not pending:
            return existed
    raise RuntimeError(f"jobs {pending} kept changing while being purged")


async def purge_batch_keys(svc: Services, batch_id: str) -> int:
    """Delete a batch's own keys: 1 if it existed, 0 if not, -1 while it still
    has jobs (or its record changed meanwhile): purge them and call again."""
    keys = svc.store.keys
    async with svc.redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.batch(batch_id), "tenant")
        pipe.lrange(keys.batch_events(batch_id), 0, -1)
        tenant, events = await pipe.execute()
    spec: dict[str, Any] = {"id": batch_id, "tenant": _s(tenant)}
    spec["lane"] = lane_of(spec["tenant"], batch_id) if spec["tenant"] else ""
    spec["events"] = [_s(e) for e in events]
    await _read_events(svc, [spec])
    plan = Plan(keys, spec)
    plan.keys = [keys.batch(batch_id), keys.batch_counts(batch_id), keys.batch_jobs(batch_id)]
    plan.keys += [keys.batch_events(batch_id), keys.expiring_batches, keys.deliveries, keys.queue]
    plan.keys.append(keys.batch_changes(batch_id))
    if spec["tenant"]:
        plan.keys += [keys.ready(spec["lane"]), keys.lanes]
    plan.steps.append(f"batch_done:{batch_id}")
    plan.events()
    keys_, args = plan.done()
    return int(await _scripts(svc)["purge_batch"](keys=keys_, args=args))
