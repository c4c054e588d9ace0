"""What the API returns: the job view, the error body, and the error answers
each route declares in the OpenAPI schema (``errors``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from jobs.domain import costs
from jobs.domain.records import Job
from jobs.domain.statuses import JobStatus


class JobView(BaseModel):
    """What the API returns for a job (never the webhook secret)."""

    id: str
    status: JobStatus
    upstream_status: str | None = None
    custom_id: str | None = None
    batch_id: str | None = None
    metadata: Any = None
    model: str | None = None
    created_at: float
    updated_at: float
    submitted_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None
    interaction_id: str | None = None
    interaction_ids: list[str] = Field(default_factory=list)
    possible_duplicate: bool = False
    attempt: int = 1
    """1, then 2 after a rerun, and so on."""
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    """The earlier attempts (status, error, interaction ids, usage, result key), oldest first."""
    poll_count: int = 0
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    """Summed over every interaction of the job."""
    usage_by_interaction: list[dict[str, Any] | None] = Field(default_factory=list)
    """Each interaction's own usage, in the order of ``interaction_ids``."""
    estimated_cost_usd: float | None = None
    """``usage`` priced by ``INTERQ_PRICES`` (USD; None: no usage, or no price)."""
    output_text: str | None = None
    pending_calls: list[dict[str, Any]] | None = None
    result_url: str | None = None
    webhook_url: str | None = None
    note: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        upstream_status=job.upstream_status or None,
        custom_id=job.custom_id or None,
        batch_id=job.batch_id or None,
        metadata=job.metadata,
        model=job.model or None,
        created_at=job.created_at,
        updated_at=job.updated_at or job.created_at,
        submitted_at=job.submitted_at,
        finished_at=job.finished_at,
        deadline=job.deadline or None,
        interaction_id=job.interaction_id or None,
        interaction_ids=job.interaction_ids,
        possible_duplicate=job.possible_duplicate,
        attempt=job.attempt,
        attempts=job.attempts,
        poll_count=job.poll_count,
        error=job.error,
        usage=job.usage,
        usage_by_interaction=job.usage_by_interaction,
        estimated_cost_usd=costs.usd(job.cost_nano_usd),
        output_text=job.output_text,
        pending_calls=job.pending_calls,
        result_url=f"/v1/jobs/{job.id}/result" if job.result_key else None,
        webhook_url=job.webhook_url or None,
        note=job.note or None,
    )


ERROR_DESCRIPTIONS = {
    400: "Not a valid request for this route",
    401: "Missing or unknown API key",
    404: "No such object for this tenant",
    409: "Not possible in the object's current status",
    413: "Request body over the size limit",
    422: "Invalid request (the error says which field and why)",
    429: "Too many requests for this tenant; see Retry-After",
    503: "Redis is unavailable or refuses writes; see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for these error statuses, each with
    the ``{"error": {...}}`` body."""
    return {c: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[c]} for c in codes}
