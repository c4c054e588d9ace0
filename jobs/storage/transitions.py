"""The atomic transitions of a job, and the end of a batch.

Each is one Lua script (``jobs/lua/<name>.lua``): it checks the expected
state (compare-and-set on the status and, for a job, its interaction id),
writes the record, moves the job between the status indexes and counts,
creates its webhook event if it has one (the outbox), and puts the job in or
out of the poll index or queues the arq step that carries it on, all in one
atomic step. A stale step therefore finds the state moved on and does
nothing, and no transition is stored without the step that follows it.

  start(job, ...)         queued | running -> running, due for its first poll
  pause(job, ...)         running -> requires_action, its event, due at its deadline
  resume(job, ...)        requires_action | running -> running, its submit step queued
  finish(job, ...)        -> a terminal status, its event, its expiry (in a batch:
                          the batch's counts, and batch_done after the last job)
  set_flags(job_id, ...)  fields only, on a status (and an interaction id)
  finish_batch(batch, ...) in_progress -> completed | cancelled, batch.completed

A change of status is also added to the job's (or batch's) changes stream
and its id published on the one changes channel, in the same script: that is
what ``GET /v1/jobs/{id}/events`` and ``?wait=`` watch (``jobs/http/watch.py``).

Every key a script touches is named here, from the ``Job`` (its tenant,
model and batch never change once it is created) and ``jobs/keys.py``, and
passed in ``KEYS``; ``keys.py`` says what that does and does not buy under
Redis Cluster. Each transition also sets ``updated_at``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from arq.jobs import serialize_job
from redis.asyncio import Redis

from jobs.domain.records import (
    Batch,
    BatchUpdate,
    Event,
    EventState,
    Fields,
    Job,
    JobUpdate,
    encode,
)
from jobs.domain.statuses import JobStatus
from jobs.storage.keys import Keys
from jobs.storage.scripts import pairs, register

# A stream of changes costs ~4.7 KB of Redis (its first listpack node) however
# few its entries: once the job or batch has ended it is kept this long (for a
# watcher that reconnects with Last-Event-ID; later it gets a snapshot), not for
# the whole retention.
ENDED_CHANGES_KEPT_MS = 3_600_000


@dataclass(frozen=True)
class Step:
    """An arq job to enqueue inside a transition (function name, args, id, delay)."""

    function: str
    args: tuple[str, ...]
    job_id: str
    defer_s: float = 0.0
    expires_s: float = 86_400.0

    def entry(self, now_ms: int) -> list[str | bytes]:
        """id, payload, score (ms), px: the arq job as ``enqueue_job`` writes it."""
        return [
            self.job_id,
            serialize_job(self.function, self.args, {}, None, now_ms),
            str(now_ms + int(self.defer_s * 1000)),
            str(int((self.defer_s + self.expires_s) * 1000)),
        ]


@dataclass
class Outcome:
    ok: bool
    previous: str  # status before the script ran ('' if the record does not exist)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _due(event: Event, now_ms: int) -> str:
    """An event with somewhere to go is due for delivery at once."""
    return str(now_ms) if event.state == EventState.pending else ""


class Transitions:
    """The transition scripts, bound to one Redis and one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, retention_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_s = retention_s  # a job ended this long ago is purged
        self._lua = register(
            redis, "start", "pause", "resume", "finish", "set_flags", "finish_batch"
        )

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Outcome:
        res = await self._lua[script](keys=keys, args=args)
        return Outcome(bool(res[0]), _s(res[1]))

    @staticmethod
    def _fields(record: type, changes: Any, at: float) -> Fields:
        return {**encode(record, changes), "updated_at": f"{at:.3f}"}

    def _in(self, job: Job, status: str) -> str:
        return self.keys.tenant_status(job.tenant, status)

    async def start(self, job: Job, changes: JobUpdate, poll_at: float) -> Outcome:
        """The create of ``job`` (queued, or running with a follow-up) was
        answered: running, due for its first poll at ``poll_at``."""
        k, at = self.keys, time.time()
        keys = [k.job(job.id), k.polls, k.counts, self._in(job, job.status)]
        keys += [self._in(job, JobStatus.running), k.job_changes(job.id)]
        if job.batch_id:
            keys.append(k.batch_counts(job.batch_id))
        args: list[Any] = [job.id, job.status.value, job.interaction_id, int(poll_at * 1000)]
        args += [job.batch_id, k.changes_channel, *pairs(self._fields(Job, changes, at))]
        return await self._run("start", keys, args)

    async def pause(self, job: Job, changes: JobUpdate, event: Event, poll_at: float) -> Outcome:
        """running -> requires_action with ``event``, polled again at ``poll_at``."""
        k, at = self.keys, time.time()
        keys = [k.job(job.id), k.job_events(job.id), k.event(event.id), k.deliveries, k.polls]
        keys += [k.counts, self._in(job, JobStatus.running)]
        keys += [self._in(job, JobStatus.requires_action), k.inflight(job.model), k.models]
        keys.append(k.job_changes(job.id))
        if job.batch_id:
            keys.append(k.batch_counts(job.batch_id))
        fields = self._fields(Job, changes, at)
        args: list[Any] = [job.id, job.interaction_id, event.id, _due(event, int(at * 1000))]
        args += [int(poll_at * 1000), job.model, job.batch_id, k.changes_channel, len(fields)]
        args += [*pairs(fields), *pairs(event.to_redis())]
        return await self._run("pause", keys, args)

    async def resume(self, job: Job, expect: JobStatus, changes: JobUpdate, step: Step) -> Outcome:
        """``expect`` (requires_action or running) -> running with a follow-up
        create to send: ``step`` (its submit) queued, out of the poll index."""
        k, at = self.keys, time.time()
        now_ms = int(at * 1000)
        keys = [k.job(job.id), k.polls, k.counts, self._in(job, expect)]
        keys += [self._in(job, JobStatus.running), k.inflight(job.model), k.models, k.queue]
        keys += [k.arq_job(step.job_id), k.job_changes(job.id)]
        if job.batch_id:
            keys.append(k.batch_counts(job.batch_id))
        args: list[Any] = [job.id, expect.value, job.interaction_id, now_ms, job.model]
        args += [job.batch_id, *step.entry(now_ms), k.changes_channel]
        args += pairs(self._fields(Job, changes, at))
        return await self._run("resume", keys, args)

    async def finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        expect: JobStatus,
        changes: JobUpdate,
        event: Event,
        batch_step: Step | None,
    ) -> Outcome:
        """``expect`` -> ``status`` (terminal) with ``event``; a job of a batch
        brings ``batch_step`` (its ``batch_done``), queued after its last job."""
        if bool(job.batch_id) != (batch_step is not None):
            raise ValueError("a job of a batch ends with its batch_done step, no other")
        k, at = self.keys, time.time()
        now_ms = int(at * 1000)
        keys = [k.job(job.id), k.job_events(job.id), k.event(event.id), k.deliveries, k.polls]
        keys += [k.counts, self._in(job, expect), self._in(job, status)]
        keys += [k.inflight(job.model), k.models, k.job_changes(job.id)]
        entry: list[Any] = ["", "", "", ""]
        if batch_step is not None:
            keys += [k.batch(job.batch_id), k.batch_counts(job.batch_id), k.expiring_batches]
            keys += [k.queue, k.arq_job(batch_step.job_id)]
            entry = batch_step.entry(now_ms)
        else:
            keys.append(k.expiring_jobs)
        fields = self._fields(Job, changes, at)
        args: list[Any] = [job.id, status.value, expect.value, job.interaction_id, job.model]
        args += [event.id, _due(event, now_ms), int((at + self.retention_s) * 1000)]
        args += [job.batch_id, *entry, k.changes_channel, ENDED_CHANGES_KEPT_MS]
        args += [len(fields), *pairs(fields)]
        args += pairs(event.to_redis())
        return await self._run("finish", keys, args)

    async def set_flags(
        self,
        job_id: str,
        expect: JobStatus,
        changes: JobUpdate,
        *,
        interaction_id: str | None = None,
        incr: dict[str, int] | None = None,
    ) -> Outcome:
        """Fields (and ``incr`` counters) of a job whose status is ``expect``
        and, if given, whose interaction id is ``interaction_id``."""
        fields = self._fields(Job, changes, time.time())
        added = pairs(incr or {})
        args: list[Any] = [expect.value, "1" if interaction_id is not None else ""]
        args += [interaction_id or "", len(added) // 2, *added, *pairs(fields)]
        return await self._run("set_flags", [self.keys.job(job_id)], args)

    async def finish_batch(self, batch: Batch, changes: BatchUpdate, event: Event) -> bool:
        """The batch's last job ended: its final fields and ``batch.completed``
        (the outbox), once (compare-and-set on ``in_progress``)."""
        k, at = self.keys, time.time()
        keys = [k.batch(batch.id), k.batch_events(batch.id), k.event(event.id), k.deliveries]
        keys.append(k.batch_changes(batch.id))
        fields = self._fields(Batch, changes, at)
        status = str(fields.get("status") or "completed")
        args: list[Any] = [event.id, _due(event, int(at * 1000)), batch.id, status]
        args += [k.changes_channel, ENDED_CHANGES_KEPT_MS, len(fields), *pairs(fields)]
        args += pairs(event.to_redis())
        out = await self._run("finish_batch", keys, args)
        return out.ok
