"""Every status interq names, in one place: the job statuses of the public
API (``JobStatus``; ``TERMINAL`` and ``ACTIVE``), the upstream interaction
statuses grouped by what interq does with them (the upstream enum is open:
an unknown value keeps polling and is counted), and the webhook event types
(``job.<status>`` for a job that ended or waits in ``requires_action``,
``batch.completed`` for a batch whose every job has ended)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    requires_action = "requires_action"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    incomplete = "incomplete"
    expired = "expired"


TERMINAL: frozenset[JobStatus] = frozenset(
    {
        JobStatus.completed,
        JobStatus.failed,
        JobStatus.cancelled,
        JobStatus.incomplete,
        JobStatus.expired,
    }
)


ACTIVE: frozenset[JobStatus] = frozenset(set(JobStatus) - TERMINAL)


# Upstream statuses, grouped by what interq does with them.
UPSTREAM_PENDING = frozenset({"queued", "in_progress", "idle"})


UPSTREAM_TERMINAL: dict[str, JobStatus] = {
    "completed": JobStatus.completed,
    "failed": JobStatus.failed,
    "cancelled": JobStatus.cancelled,
    "incomplete": JobStatus.incomplete,
    "budget_exceeded": JobStatus.incomplete,
}


UPSTREAM_KNOWN = (
    UPSTREAM_PENDING
    | set(UPSTREAM_TERMINAL)
    | {
        "requires_action",
        "requires_continuation",
    }
)


UpstreamClass = Literal["pending", "action", "continuation", "terminal"]


def classify_upstream(status: str) -> UpstreamClass:
    """What to do with an upstream status; unknown values keep polling."""
    if status in UPSTREAM_TERMINAL:
        return "terminal"
    if status == "requires_action":
        return "action"
    if status == "requires_continuation":
        return "continuation"
    return "pending"


def event_type(status: JobStatus) -> str:
    """The webhook event type of a job that reached ``status``."""
    return f"job.{status.value}"


BATCH_COMPLETED = "batch.completed"
"""The webhook event type of a batch whose every job has ended."""
