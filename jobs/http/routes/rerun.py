"""The rerun routes: ``POST /v1/jobs/{id}/rerun`` (one job that ended without
an answer) and ``POST /v1/batches/{id}/rerun`` (a batch's lines by status,
failed and expired unless ``status`` says otherwise). Both take an
``Idempotency-Key``: a repeat answers as the first call did
(``Idempotent-Replayed: true``) and runs nothing again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from jobs.domain import batches, rerun
from jobs.domain.statuses import JobStatus
from jobs.errors import Conflict, InvalidRequest
from jobs.http.deps import Svc, Tenant, own_batch, own_job
from jobs.http.tenant_guard import DailyTokens
from jobs.http.views import JobView, errors, job_view

router = APIRouter(responses=errors(401, 404, 409, 422, 429, 503))
IdemKey = Annotated[str | None, Header(max_length=255)]


@router.post("/v1/jobs/{job_id}/rerun", status_code=202, response_model=JobView)
async def rerun_job(
    job_id: str,
    s: Svc,
    t: Tenant,
    _: DailyTokens,  # new work: 429 tenant_daily_tokens once the tenant's day is spent
    response: Response,
    idempotency_key: IdemKey = None,
) -> Any:
    """Queue a new attempt of a job that ended failed, expired, cancelled or
    incomplete (409 otherwise). Its earlier attempts are listed in ``attempts``."""
    job = await own_job(s, t, job_id)
    outcome = await rerun.rerun_job(s, job, idempotency_key)
    if outcome == "replayed":
        response.headers["Idempotent-Replayed"] = "true"
    elif outcome == "changed":
        raise Conflict(f"job {job_id} changed while it was being rerun; read it and try again")
    return job_view(await own_job(s, t, job_id))


@router.post("/v1/batches/{batch_id}/rerun", status_code=202)
async def rerun_batch(
    batch_id: str,
    s: Svc,
    t: Tenant,
    _: DailyTokens,
    response: Response,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    idempotency_key: IdemKey = None,
) -> Any:
    """Queue a new attempt of each of the batch's jobs in one of the ``status``
    values given (repeat the parameter; default failed and expired). The jobs
    keep their custom ids and their place in the results."""
    wanted = status or list(rerun.BATCH_DEFAULT)
    if bad := [s_.value for s_ in wanted if s_ not in rerun.RERUNNABLE]:
        raise InvalidRequest(
            f"status {', '.join(bad)} cannot be rerun; use failed, expired, cancelled or incomplete"
        )
    batch = await own_batch(s, t, batch_id)
    answer = await rerun.rerun_batch(s, batch, wanted, idempotency_key)
    if answer.pop("replayed", False):
        response.headers["Idempotent-Replayed"] = "true"
    view = await batches.batch_view(s, await own_batch(s, t, batch_id))
    return {**view, "rerun": answer}
