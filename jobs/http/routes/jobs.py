"""The job routes: ``/v1/jobs`` (create, list, get, cancel, continue, delete)
and a job's stored result and files.

Every route answers for the caller's tenant only (another tenant's job is a
404, like an unknown one) and raises the ``ApiError`` of ``jobs/errors.py``
for anything it refuses."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from jobs.delivery import signing, url_safety
from jobs.domain import batches, cancel, checks, lifecycle
from jobs.domain.records import Job
from jobs.domain.requests import ContinueBody, JobCreate
from jobs.domain.statuses import JobStatus
from jobs.errors import (
    Conflict,
    IdempotencyKeyReused,
    JobInBatch,
    NoResult,
    NotFound,
    ResultNotFound,
    UnknownCallId,
)
from jobs.http.deps import Svc, Tenant, own_batch, own_job
from jobs.http.routes import events
from jobs.http.tenant_guard import within_daily_tokens
from jobs.http.views import JobView, errors, job_view
from jobs.observe import metrics
from jobs.services import Services
from jobs.storage.keys import lane_of
from jobs.work import retention

router = APIRouter(responses=errors(401, 422, 429, 503))


IDEM_MAX = 255
CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": JobCreate.model_json_schema()}},
    },
    "parameters": [
        {
            "name": "idempotency-key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": IDEM_MAX},
        }
    ],
}


async def create_body(request: Request) -> tuple[JobCreate, str | None]:
    """The body and the Idempotency-Key of ``POST /v1/jobs``, read here rather
    than declared as parameters: FastAPI then has two parameters fewer to solve
    per request, the route's largest cost. The answers to bad input are a
    declared body's: 422 for JSON that does not parse or a body that does not
    validate, 400 for one nested past what the JSON parser takes."""
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > IDEM_MAX:
        loc = ("header", "idempotency-key")
        raise RequestValidationError([{"loc": loc, "msg": f"at most {IDEM_MAX} characters"}])
    raw = await request.body()
    try:
        data = json.loads(raw) if raw else None
    except json.JSONDecodeError as e:
        err = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error"}
        raise RequestValidationError([err]) from None
    except (RecursionError, ValueError):  # too deep, or not text
        raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return JobCreate.model_validate(data), key
    except ValidationError as e:
        errs = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errs) from None


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobView,
    responses=errors(413),
    openapi_extra=CREATE_DOC,
)
async def create_job(request: Request, t: Tenant) -> Response:
    """Queue one interaction. A webhook without a ``secret`` gets a generated
    one, returned once in ``X-Webhook-Secret``. The same ``Idempotency-Key``
    with the same body answers the first job (``Idempotent-Replayed: true``)."""
    # the services straight from the app, not by ``Svc``: one dependency less
    s: Services = request.app.state.svc
    body, idempotency_key = await create_body(request)
    await within_daily_tokens(s, t)  # 429 tenant_daily_tokens (a call: no dependency to solve)
    forward = s.settings.forward_unknown_fields
    await checks.check_create(s.store, t, body.interaction, forward_unknown=forward)  # 422
    secret = ""
    if body.webhook is not None:
        await url_safety.resolve(str(body.webhook.url), s.webhook_policy)  # 422 UnsafeURL
        secret = body.webhook.secret or signing.generate_secret()
    job = lifecycle.new_job(
        s.settings,
        t,
        body.interaction,
        now=time.time(),
        metadata=body.metadata,
        custom_id=body.custom_id,
        webhook_url=str(body.webhook.url) if body.webhook else "",
        webhook_secret=secret,
        timeout_s=body.timeout_s,
    )
    replayed = await store_new_job(s, job, body, idempotency_key)
    if replayed is not None:
        first = job_view(await own_job(s, t, replayed))
        return view_response(first, {"Idempotent-Replayed": "true"})
    headers = {}
    if body.webhook is not None and not body.webhook.secret:
        headers["X-Webhook-Secret"] = secret
    metrics.JOBS_ACCEPTED.labels(model=metrics.model_label(job.model)).inc()
    # the record is its own stored form (``new_job``): no read back, no re-decoding
    return view_response(job_view(job), headers)


def view_response(view: JobView, headers: dict[str, str]) -> Response:
    """The 202 with the view as JSON, serialized once by pydantic (returning
    the model would have FastAPI validate it again against ``response_model``
    and encode it with ``json.dumps``)."""
    content = view.model_dump_json().encode()
    return Response(content, 202, headers, media_type="application/json")


async def store_new_job(s: Services, job: Job, body: JobCreate, key: str | None) -> str | None:
    """Store ``job``; ``None`` if it was stored, or the id of the job an
    earlier call with the same idempotency key and body created."""
    digest = ""
    idem = None
    if key:
        digest = hashlib.sha256(canonical(body).encode()).hexdigest()
        idem = (hashlib.sha256(key.encode()).hexdigest(), f"{job.id}|{digest}")
    created, existing = await s.store.create_job(
        job, lane=lane_of(job.tenant, None), idem=idem, idem_ttl_s=s.settings.idempotency_ttl_s
    )
    if created:
        return None
    first_id, first_digest = existing.split("|", 1)
    if first_digest != digest:
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different body")
    return first_id


CANONICAL_FIELDS = ("interaction", "webhook", "metadata", "timeout_s", "custom_id")


def canonical(body: JobCreate) -> str:
    """The body as an Idempotency-Key's digest covers it: the text of
    ``json.dumps(body.model_dump(mode="json"), sort_keys=True)``, built from
    the fields directly (a model dump of the whole body costs more than the
    rest of the digest; tests/test_intake_fast.py checks they are the same)."""
    hook = body.webhook
    dumped = {
        "interaction": body.interaction,
        "webhook": None if hook is None else {"url": str(hook.url), "secret": hook.secret},
        "metadata": body.metadata,
        "timeout_s": body.timeout_s,
        "custom_id": body.custom_id,
    }
    return json.dumps(dumped, sort_keys=True)


@router.get("/v1/jobs/{job_id}", response_model=JobView, responses=errors(404))
async def get_job(
    job_id: str, s: Svc, t: Tenant, request: Request, wait: events.Wait = None
) -> Any:
    """The job; with ``?wait=SECONDS``, once its status changes (at once if final)."""
    return job_view(await events.waited_job(request, s, t, job_id, wait))


@router.get("/v1/jobs", responses=errors(404))
async def list_jobs(
    s: Svc,
    t: Tenant,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int | None, Query(ge=0)] = None,
    batch_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    """Newest first; with ``batch_id``, the batch's jobs in input order (404
    for a batch that is not the caller's)."""
    if batch_id is not None:
        await own_batch(s, t, batch_id)
        page = await batches.page(s, batch_id, status, limit, cursor or 0)
    else:
        page = await s.store.list_jobs(
            t, status=status.value if status else None, limit=limit, cursor=cursor
        )
    return {
        "data": [job_view(j).model_dump(mode="json") for j in page.items],
        "next_cursor": page.next_cursor,
    }


@router.get("/v1/jobs/{job_id}/result", responses=errors(404))
async def get_result(job_id: str, s: Svc, t: Tenant) -> Any:
    """The stored interaction, as the upstream returned it (its last hop)."""
    job = await own_job(s, t, job_id)
    if not job.result_key:
        raise NoResult(f"job {job_id} has no result yet (status {job.status.value})")
    try:
        data = await s.results.get(job.result_key)
    except ResultNotFound:
        raise NoResult("the stored result is missing") from None
    return Response(content=data, media_type="application/json")


@router.post(
    "/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobView, responses=errors(404, 409)
)
async def cancel_job(job_id: str, s: Svc, t: Tenant) -> Any:
    """Queued: cancelled now. Running: cancelled upstream at its next poll
    (poked to poll now). Waiting in ``requires_action``: cancelled now."""
    job = await own_job(s, t, job_id)
    ended = await cancel.request(s, job, "cancelled before it was sent upstream")
    if ended is not None:
        raise Conflict(f"job is already {ended}")
    return job_view(await own_job(s, t, job_id))


@router.post(
    "/v1/jobs/{job_id}/continue",
    status_code=202,
    response_model=JobView,
    responses=errors(404, 409),
)
async def continue_job(job_id: str, body: ContinueBody, s: Svc, t: Tenant) -> Any:
    """The next turn of a job waiting in ``requires_action``: results for its
    pending function calls, or text / other user content when the agent asked
    a question or wants its plan confirmed (no pending call). It runs on as a
    new interaction chained to the last one."""
    job = await own_job(s, t, job_id)
    if job.status != JobStatus.requires_action:
        raise Conflict(f"job is {job.status.value}, not {JobStatus.requires_action.value}")
    pending = {c.get("id") for c in job.pending_calls or []}
    unknown = [i for i in body.call_ids() if i not in pending]
    if unknown:
        raise UnknownCallId(f"no pending function_call with id {', '.join(unknown)}")
    stored = json.loads(await s.results.get(job.result_key))
    follow = lifecycle.follow_up_body(job, stored, input=body.input)
    if not await lifecycle.chain(s, job, JobStatus.requires_action, follow):
        raise Conflict("the job moved on; fetch it again")
    return job_view(await own_job(s, t, job_id))


@router.get("/v1/jobs/{job_id}/files/{name}", responses=errors(404))
async def get_file(job_id: str, name: str, s: Svc, t: Tenant) -> Any:
    """A file the interaction produced (an image, audio), by the name its
    result gives it."""
    job = await own_job(s, t, job_id)
    files = job.files
    if name not in files:
        raise NotFound(f"job {job_id} has no file {name!r}")
    try:
        data = await s.results.get(f"{job_id}/files/{name}")
    except ResultNotFound:
        raise NotFound("the stored file is missing") from None
    return Response(content=data, media_type=files[name])


@router.delete(
    "/v1/jobs/{job_id}", status_code=204, response_class=Response, responses=errors(404, 409)
)
async def delete_job(job_id: str, s: Svc, t: Tenant) -> Response:
    """Delete the job now (record, events, logs, indexes, stored result and
    files): cancelled first if queued, running or waiting in
    ``requires_action``, and its undelivered webhook event goes with it. A job
    of a batch is deleted with its batch only (409 ``job_in_batch``)."""
    job = await own_job(s, t, job_id)
    if job.batch_id:
        raise JobInBatch(
            f"job {job_id} belongs to batch {job.batch_id}; delete the batch "
            f"(DELETE /v1/batches/{job.batch_id}) to delete its jobs",
            batch_id=job.batch_id,
        )
    await retention.delete_job(s, job)
    return Response(status_code=204)
