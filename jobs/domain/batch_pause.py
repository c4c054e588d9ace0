"""A batch that stops burning itself: when its first jobs to end are all
refused upstream with the same 400 (a body the API will refuse for every
line), the rest of the batch is held instead of being sent to fail.

The rule: ``INTERQ_BATCH_PAUSE_AFTER`` jobs of the batch (default 5; 0 turns
it off) failed ``upstream_rejected`` with the same HTTP status and message,
and no job of it ended any other way before them. The batch is then paused:
the dispatcher sends none of its queued jobs, the batch view says
``"status": "paused"`` with the refusal in ``pause_error``, and the jobs
stay ``queued`` until ``POST /v1/batches/{id}/resume`` (send them anyway;
the batch does not pause again) or ``POST /v1/batches/{id}/cancel``.

What it keeps, in the batch's hash: ``first_rejection`` (status|message of
the first refusal), ``rejections`` (how many matched it), ``streak_broken``
(a job ended otherwise, or the batch was resumed), ``paused`` and
``pause_error``."""

from __future__ import annotations

import json
import logging
from typing import Any

from jobs.domain.records import Batch
from jobs.domain.statuses import JobStatus
from jobs.errors import Conflict
from jobs.observe import metrics
from jobs.services import Services
from jobs.storage import changes
from jobs.storage.store import STAGING

log = logging.getLogger("interq.batches")


def refusal(status: JobStatus, error: dict[str, Any] | None) -> str | None:
    """The signature of an upstream 400 refusal, or None for any other end."""
    if status != JobStatus.failed or not error or error.get("code") != "upstream_rejected":
        return None
    if error.get("status") != 400:
        return None
    return f"{error.get('status')}|{error.get('message')}"


async def after_finish(
    svc: Services, batch_id: str, status: JobStatus, error: dict[str, Any] | None
) -> bool:
    """Count a batch job's end toward the rule; True when it paused the batch."""
    limit = svc.settings.batch_pause_after
    if limit <= 0:
        return False
    broken = _known_broken(svc)
    if batch_id in broken:  # decided: no I/O on the finish path for the rest
        return False
    key = svc.store.keys.batch(batch_id)
    r = svc.redis
    sig = refusal(status, error)
    if sig is None:
        await r.hset(key, "streak_broken", "1")  # type: ignore[misc]
        broken[batch_id] = None
        return False
    async with r.pipeline(transaction=False) as pipe:
        pipe.hsetnx(key, "first_rejection", sig)
        pipe.hmget(key, ["first_rejection", "streak_broken"])
        _, (first, was_broken) = await pipe.execute()
    first = first.decode() if isinstance(first, bytes) else first
    if was_broken or first != sig:
        await r.hset(key, "streak_broken", "1")  # type: ignore[misc]
        broken[batch_id] = None
        return False
    if int(await r.hincrby(key, "rejections", 1)) != limit:  # type: ignore[misc]
        return False
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"paused": "1", "pause_error": json.dumps(error)})
        changes.note_batch_status(pipe, svc.store.keys, batch_id, "paused", "in_progress")
        await pipe.execute()
    metrics.BATCHES_PAUSED.inc()
    log.warning("batch %s paused: its first %d jobs were refused upstream alike", batch_id, limit)
    return True


KNOWN_BROKEN_MAX = 10_000


def _known_broken(svc: Services) -> dict[str, None]:
    """Batches this process has seen break the streak (they can never pause):
    a bounded per-process memo, emptied when full."""
    memo = svc.cache.setdefault("batch_streak_broken", {})
    assert isinstance(memo, dict)
    if len(memo) >= KNOWN_BROKEN_MAX:
        memo.clear()
    return memo


async def is_paused(svc: Services, batch_id: str) -> bool:
    return bool(await svc.redis.hget(svc.store.keys.batch(batch_id), "paused"))  # type: ignore[misc]


async def held(svc: Services, batch_id: str) -> bool:
    """Whether the dispatcher leaves the batch's lane alone: paused, or not
    committed yet (``staging``: ``jobs/storage/batch_write.py``)."""
    key = svc.store.keys.batch(batch_id)
    paused, staging = await svc.redis.hmget(key, ["paused", STAGING])  # type: ignore[misc]
    return bool(paused or staging)


async def resume(svc: Services, batch: Batch) -> None:
    """Send the paused batch's queued jobs after all (it will not pause again)."""
    if not batch.extra.get("paused"):
        raise Conflict(f"batch {batch.id} is not paused")
    await lift(svc, batch.id)


async def lift(svc: Services, batch_id: str) -> None:
    """Take the pause off (resume, or a cancel, whose dispatcher pass then
    drops the cancelled jobs from the lane)."""
    key = svc.store.keys.batch(batch_id)
    async with svc.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, "streak_broken", "1")
        pipe.hdel(key, "paused")
        changes.note_batch_status(pipe, svc.store.keys, batch_id, "in_progress", "paused")
        await pipe.execute()


def view_fields(batch: Batch) -> dict[str, Any]:
    """What the batch view adds for a paused batch."""
    if not batch.extra.get("paused") or batch.status != "in_progress":
        return {}
    raw = batch.extra.get("pause_error") or "null"
    return {"status": "paused", "pause_error": json.loads(raw)}
