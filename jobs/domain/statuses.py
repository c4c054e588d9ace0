"""TODO docstring."""

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
    return f"job.{status.value}"
