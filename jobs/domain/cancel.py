"""Cancelling a job: one flow for every caller (``POST /v1/jobs/{id}/cancel``,
a batch's cancel, a delete).

By the job's status when the cancel arrives:

- ``queued``: it ends ``cancelled`` at once and is never sent upstream (if it
  was picked up meanwhile, it is cancelled as a running job);
- ``running``: the job is flagged ``cancel_requested`` and poked; its next
  poll cancels the interaction upstream and ends it ``cancelled``. With
  ``at_once`` (a delete, which cannot wait for a poll) the interaction is
  cancelled upstream here and the job ends now;
- ``requires_action``: nothing runs upstream, so it ends at once (the
  upstream cancel is best effort);
- already ended: nothing changes, and ``request`` says which status it ended in.
"""

from __future__ import annotations

import logging

from jobs.domain.lifecycle import finish
from jobs.domain.records import Job
from jobs.domain.statuses import TERMINAL, JobStatus
from jobs.errors import UpstreamError
from jobs.services import Services

log = logging.getLogger("interq.cancel")


async def request(svc: Services, job: Job, note: str, *, at_once: bool = False) -> str | None:
    """Cancel ``job`` (see the module docstring); ``note`` is stored on a job
    cancelled before it was sent. Returns ``None`` once the cancel is done or
    requested, or the status the job had already ended in."""
    status = job.status
    if status in TERMINAL:
        return status.value
    if status == JobStatus.queued:
        if await finish(svc, job, JobStatus.cancelled, expect=status, note=note):
            return None
        fresh = await svc.store.get_job(job.id)  # picked up meanwhile
        if fresh is None:
            return None
        job, status = fresh, fresh.status
    if status == JobStatus.requires_action:
        await cancel_paused(svc, job)
        return None
    if status != JobStatus.running:
        return status.value
    if at_once:
        await cancel_running_now(svc, job)
        return None
    out = await svc.store.set_flags(job.id, JobStatus.running, {"cancel_requested": True})
    if out.ok:
        await svc.store.poke(job.id)
    elif out.previous == JobStatus.requires_action:
        await cancel_paused(svc, job)
    elif out.previous in TERMINAL:
        return out.previous
    return None


async def cancel_paused(svc: Services, job: Job) -> None:
    """End a job waiting in ``requires_action`` as ``cancelled``."""
    await upstream_cancel(svc, job, "of a paused interaction")
    await finish(svc, job, JobStatus.cancelled, expect=JobStatus.requires_action)


async def cancel_running_now(svc: Services, job: Job) -> None:
    """Cancel a running job's interaction upstream and end the job, without
    waiting for its next poll."""
    await upstream_cancel(svc, job, "while running")
    note = "cancelled while running; cancelled upstream"
    await finish(svc, job, JobStatus.cancelled, expect=JobStatus.running, note=note)


async def upstream_cancel(svc: Services, job: Job, when: str) -> None:
    """Cancel the job's interaction upstream, best effort: a failure is
    logged (``when`` says at what point) and the caller ends the job anyway."""
    if not job.interaction_id:
        return
    try:
        await svc.upstream.cancel(job.interaction_id)
    except UpstreamError as e:
        log.info("job %s: upstream cancel %s failed: %s", job.id, when, e.message)
