"""HTTP routes that delete: ``DELETE /v1/jobs/{id}`` and ``DELETE /v1/batches/{id}``.

Both answer 204 once everything is gone (record, events, logs, indexes,
stored files); an active job is cancelled first (upstream too). A job of a
batch is deleted with its batch only (409 otherwise: the batch's counts,
results and ``batch.completed`` event cover all of its jobs). Another tenant's
id is 404, like an unknown one. The webhook event of a job deleted early is
deleted with it, so it is not delivered.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.domain import batches
from jobs.http.deps import Svc, Tenant, own_job
from jobs.http.errors import api_error
from jobs.work import retention

router = APIRouter()


@router.delete("/v1/jobs/{job_id}", status_code=204, response_class=Response)
async def delete_job(job_id: str, s: Svc, t: Tenant) -> Response:
    """Delete the job now: cancelled first if queued, running or waiting in
    ``requires_action``; its stored result and files go too."""
    job = await own_job(s, t, job_id)
    batch_id = job.batch_id
    if batch_id:
        return api_error(
            409,
            "job_in_batch",
            f"job {job_id} belongs to batch {batch_id}; delete the batch "
            f"(DELETE /v1/batches/{batch_id}) to delete its jobs",
            batch_id=batch_id,
        )
    await retention.delete_job(s, job)
    return Response(status_code=204)


@router.delete("/v1/batches/{batch_id}", status_code=204, response_class=Response)
async def delete_batch(batch_id: str, s: Svc, t: Tenant) -> Response:
    """Delete the batch and every job of it: active jobs are cancelled first."""
    batch = await batches.get_batch(s, t, batch_id)
    if batch is None:
        raise StarletteHTTPException(404, f"no batch {batch_id!r}")
    await retention.delete_batch(s, batch)
    return Response(status_code=204)
