"""The HTTP intake: ``uvicorn api:app`` (or ``interq api``). OpenAPI at /docs."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.delivery import signing, url_safety
from jobs.domain import batches
from jobs.domain import lifecycle as outcomes
from jobs.domain.records import Job
from jobs.domain.requests import BatchCreate, ContinueBody, JobCreate, WebhookSpec
from jobs.domain.statuses import TERMINAL, JobStatus
from jobs.http import errors as http_errors
from jobs.http.deps import DEFAULT_TENANT, Svc, Tenant, own_batch, own_job
from jobs.http.errors import api_error
from jobs.http.middleware import BodyLimit
from jobs.http.routes import retention as retention_routes
from jobs.http.routes import webhooks as webhook_routes
from jobs.http.views import ErrorResponse, JobView, job_view
from jobs.observe import metrics
from jobs.services import Services, redis_client
from jobs.settings import Settings, get_settings
from jobs.storage.results import ResultNotFound
from jobs.ui import page as ui
from jobs.work import steps
from jobs.work.dispatch import lane_of

log = logging.getLogger("interq.api")
NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson"}
)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 503)
}


def create_app(
    settings: Settings | None = None, upstream_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    cfg = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.svc = Services.open(cfg, upstream_transport=upstream_transport)
        app.state.probe = redis_client(cfg, retries=0, socket_timeout=5.0)  # for /readyz
        if not cfg.api_keys:
            log.warning(
                "no INTERQ_API_KEYS configured: serving one tenant, %r, without auth",
                DEFAULT_TENANT,
            )
        try:
            yield
        finally:
            await app.state.probe.aclose()
            await app.state.svc.close()

    app = FastAPI(title="interq", version="0.1.0", lifespan=lifespan, responses=ERRORS)
    app.add_middleware(
        BodyLimit, max_bytes=cfg.max_body_bytes, large=("/v1/batches", cfg.max_batch_bytes)
    )
    app.add_middleware(http_errors.CatchAll)  # outermost of ours: errors become JSON
    http_errors.install(app)  # every error answer is JSON (jobs/http/errors.py)
    app.include_router(routes(cfg))
    app.include_router(webhook_routes.router)
    app.include_router(retention_routes.router)
    app.include_router(ui.router)
    return app


def routes(cfg: Settings) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/jobs", status_code=202, response_model=JobView)
    async def create_job(
        body: JobCreate,
        s: Svc,
        t: Tenant,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> Any:
        secret = None
        if body.webhook is not None:
            try:
                await url_safety.resolve(str(body.webhook.url), s.webhook_policy)
            except url_safety.UnsafeURL as e:
                return api_error(422, "unsafe_webhook_url", str(e))
            secret = body.webhook.secret or signing.generate_secret()
        job = outcomes.new_job(
            cfg,
            t,
            body.interaction,
            now=time.time(),
            metadata=body.metadata,
            custom_id=body.custom_id,
            webhook_url=str(body.webhook.url) if body.webhook else "",
            webhook_secret=secret or "",
            timeout_s=body.timeout_s,
        )
        idem = None
        if idempotency_key:
            digest = hashlib.sha256(
                json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()
            ).hexdigest()
            idem = (hashlib.sha256(idempotency_key.encode()).hexdigest(), f"{job.id}|{digest}")
        created, existing = await s.store.create_job(
            job, lane=lane_of(t, None), idem=idem, idem_ttl_s=cfg.idempotency_ttl_s
        )
        if not created:
            assert idem is not None
            first_id, first_digest = existing.split("|", 1)
            if first_digest != idem[1].split("|", 1)[1]:
                return api_error(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different body",
                )
            response.headers["Idempotent-Replayed"] = "true"
            return job_view(await own_job(s, t, first_id))
        metrics.JOBS_ACCEPTED.labels(model=metrics.model_label(job.model)).inc()
        out = job_view(Job.from_redis(job.to_redis()))  # as stored
        if secret and not (body.webhook and body.webhook.secret):
            response.headers["X-Webhook-Secret"] = secret
        return out

    @r.get("/v1/jobs/{job_id}", response_model=JobView)
    async def get_job(job_id: str, s: Svc, t: Tenant) -> Any:
        return job_view(await own_job(s, t, job_id))

    @r.get("/v1/jobs")
    async def list_jobs(
        s: Svc,
        t: Tenant,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[int | None, Query(ge=0)] = None,
        batch_id: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Any:
        """Newest first; with ``batch_id``, the batch's jobs in input order."""
        if batch_id is not None:
            if await batches.get_batch(s, t, batch_id) is None:
                raise StarletteHTTPException(404, f"no batch {batch_id!r}")
            page = await batches.page(s, batch_id, status, limit, cursor or 0)
        else:
            page = await s.store.list_jobs(
                t, status=status.value if status else None, limit=limit, cursor=cursor
            )
        return {
            "data": [job_view(j).model_dump(mode="json") for j in page.items],
            "next_cursor": page.next_cursor,
        }

    @r.get("/v1/jobs/{job_id}/result")
    async def get_result(job_id: str, s: Svc, t: Tenant) -> Any:
        job = await own_job(s, t, job_id)
        key = job.result_key
        if not key:
            return api_error(
                404, "no_result", f"job {job_id} has no result yet (status {job.status.value})"
            )
        try:
            data = await s.results.get(key)
        except ResultNotFound:
            return api_error(404, "no_result", "the stored result is missing")
        return Response(content=data, media_type="application/json")

    @r.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobView)
    async def cancel_job(job_id: str, s: Svc, t: Tenant) -> Any:
        job = await own_job(s, t, job_id)
        status = job.status
        if status in TERMINAL:
            return api_error(409, "illegal_transition", f"job is already {status.value}")
        if status == JobStatus.queued:
            if await outcomes.finish(
                s,
                job,
                JobStatus.cancelled,
                expect=JobStatus.queued,
                note="cancelled before it was sent upstream",
            ):
                return job_view(await own_job(s, t, job_id))
            job = await own_job(s, t, job_id)  # it moved on meanwhile: cancel as running
        out = await s.store.set_flags(job_id, JobStatus.running, {"cancel_requested": True})
        if out.ok:
            await s.store.poke(job_id)
        elif out.previous == JobStatus.requires_action:
            await steps.cancel_paused(s, job)
        elif out.previous in TERMINAL:
            return api_error(409, "illegal_transition", f"job is already {out.previous}")
        return job_view(await own_job(s, t, job_id))

    @r.post("/v1/jobs/{job_id}/continue", status_code=202, response_model=JobView)
    async def continue_job(job_id: str, body: ContinueBody, s: Svc, t: Tenant) -> Any:
        job = await own_job(s, t, job_id)
        if job.status != JobStatus.requires_action:
            return api_error(
                409, "illegal_transition", f"job is {job.status.value}, not requires_action"
            )
        pending = {c.get("id") for c in job.pending_calls or []}
        unknown = [i["call_id"] for i in body.input if i["call_id"] not in pending]
        if unknown:
            return api_error(
                422, "unknown_call_id", f"no pending function_call with id {', '.join(unknown)}"
            )
        stored = json.loads(await s.results.get(job.result_key))
        follow = outcomes.follow_up_body(job, stored, input=body.input)
        if not await outcomes.chain(s, job, JobStatus.requires_action, follow):
            return api_error(409, "illegal_transition", "the job moved on; fetch it again")
        return job_view(await own_job(s, t, job_id))

    @r.get("/v1/jobs/{job_id}/files/{name}")
    async def get_file(job_id: str, name: str, s: Svc, t: Tenant) -> Any:
        job = await own_job(s, t, job_id)
        files = job.files
        if name not in files:
            return api_error(404, "not_found", f"job {job_id} has no file {name!r}")
        try:
            data = await s.results.get(f"{job_id}/files/{name}")
        except ResultNotFound:
            return api_error(404, "not_found", "the stored file is missing")
        return Response(content=data, media_type=files[name])

    @r.post(
        "/v1/batches",
        status_code=202,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": BatchCreate.model_json_schema()},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def create_batch(
        request: Request,
        response: Response,
        s: Svc,
        t: Tenant,
        x_webhook_url: Annotated[str | None, Header()] = None,
        x_webhook_secret: Annotated[str | None, Header()] = None,
    ) -> Any:
        raw = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype in NDJSON_TYPES:
                items = batches.ndjson_items(raw)
                hook = (
                    WebhookSpec(url=x_webhook_url, secret=x_webhook_secret)  # type: ignore[arg-type]
                    if x_webhook_url
                    else None
                )
                metadata = None
            else:
                body = BatchCreate.model_validate_json(raw)
                items = list(enumerate(body.jobs, start=1))
                hook, metadata = body.webhook, body.metadata
            lines = batches.validate_lines(items, cfg.max_batch_jobs)
            if hook is not None and hook.secret is None:
                hook = WebhookSpec(url=hook.url, secret=signing.generate_secret())
                response.headers["X-Webhook-Secret"] = hook.secret or ""
            batch_id = await batches.create_batch(s, t, lines, hook, metadata)
        except ValidationError as e:
            return api_error(422, "invalid_request", batches._explain(e))
        batch = await batches.get_batch(s, t, batch_id)
        assert batch is not None
        return await batches.batch_view(s, batch)

    @r.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, s: Svc, t: Tenant) -> Any:
        return await batches.batch_view(s, await own_batch(s, t, batch_id))

    @r.get("/v1/batches/{batch_id}/results")
    async def batch_results(batch_id: str, s: Svc, t: Tenant) -> Any:
        await own_batch(s, t, batch_id)
        return StreamingResponse(
            batches.iter_results(s, batch_id), media_type="application/x-ndjson"
        )

    @r.post("/v1/batches/{batch_id}/cancel", status_code=202)
    async def cancel_batch(batch_id: str, s: Svc, t: Tenant) -> Any:
        batch = await own_batch(s, t, batch_id)
        if batch.status != "in_progress":
            return api_error(409, "illegal_transition", f"batch is already {batch.status}")
        await batches.cancel_batch(s, batch)
        return await batches.batch_view(s, await own_batch(s, t, batch_id))

    @r.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @r.get("/readyz")
    async def readyz(request: Request, s: Svc) -> Any:
        """Ready while Redis answers and takes writes; 503 with a ``detail``
        (readonly, oom, loading, connection, timeout) otherwise."""
        return await http_errors.readiness(request.app.state.probe, s.store.keys.readyz)

    @r.get("/metrics")
    async def prom(s: Svc) -> Response:
        await metrics.refresh_queue_gauges(s.redis, s.store.keys)
        body = generate_latest() + generate_latest(metrics.QUEUE_REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return r


app = create_app()
