"""The batch routes: ``/v1/batches`` (create from JSON or NDJSON, get, stream
the results, cancel, delete). A batch is the caller's tenant's only; another
tenant's id is a 404, like an unknown one."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from jobs.delivery import signing
from jobs.domain import batch_pause, batches
from jobs.domain.batch_ingest import Ingest
from jobs.domain.batch_lines import Frame, explain
from jobs.domain.requests import BatchCreate, WebhookSpec, check_metadata
from jobs.errors import Conflict, InvalidRequest, TooLarge
from jobs.http.deps import Svc, Tenant, own_batch
from jobs.http.routes import events
from jobs.http.tenant_guard import DailyTokens
from jobs.http.views import errors
from jobs.work import retention

NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson"}
)
READ_CHUNK = 1 << 20  # bytes of body handed to the parsing thread at a time
JSON_SLICE = 2_000  # items of a JSON body's jobs handed to it at a time
router = APIRouter(responses=errors(401, 422, 429, 503))
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchCreate.model_json_schema()},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


@router.post("/v1/batches", status_code=202, openapi_extra=BATCH_BODY, responses=errors(413))
async def create_batch(
    request: Request,
    response: Response,
    s: Svc,
    t: Tenant,
    _: DailyTokens,  # 429 tenant_daily_tokens (jobs/http/tenant_guard.py)
    x_webhook_url: Annotated[str | None, Header()] = None,
    x_webhook_secret: Annotated[str | None, Header()] = None,
    x_batch_metadata: Annotated[
        str | None, Header(description="NDJSON: the batch's metadata, as JSON")
    ] = None,
) -> Any:
    """A batch of jobs, as ``{"jobs": [...]}`` or one job per NDJSON line (its
    webhook then in ``X-Webhook-Url`` / ``X-Webhook-Secret``, its metadata in
    ``X-Batch-Metadata``). All lines are checked first: any invalid line
    refuses the whole batch (422 ``invalid_batch`` listing every bad line)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    ingest = Ingest(s, t)
    try:
        try:
            if ctype in NDJSON_TYPES:
                hook = None
                if x_webhook_url:
                    spec = {"url": x_webhook_url, "secret": x_webhook_secret}
                    hook = WebhookSpec.model_validate(spec)
                metadata = header_metadata(x_batch_metadata)
                await read_ndjson(request, ingest, response, hook, metadata)
            else:
                if x_batch_metadata is not None:
                    raise InvalidRequest(
                        "X-Batch-Metadata goes with NDJSON; a JSON body has 'metadata'"
                    )
                await read_json(request, ingest, response)
            batch_id = await ingest.finish()
        except BaseException:
            await asyncio.shield(ingest.abort())
            raise
    except ValidationError as e:
        raise InvalidRequest(explain(e)) from None
    return await batches.batch_view(s, await own_batch(s, t, batch_id))


def start(ingest: Ingest, response: Response, hook: WebhookSpec | None, metadata: Any) -> None:
    """The batch's own fields known: a webhook without a secret gets one
    (answered in ``X-Webhook-Secret``), and its jobs can be written."""
    if hook is not None and hook.secret is None:
        hook = WebhookSpec(url=hook.url, secret=signing.generate_secret())
        response.headers["X-Webhook-Secret"] = hook.secret or ""
    ingest.start(hook, metadata)


def header_metadata(raw: str | None) -> Any:
    """``X-Batch-Metadata``: an NDJSON batch's metadata, as JSON (bounded as a
    JSON body's ``metadata``); 422 if it is not."""
    if raw is None:
        return None
    try:
        return check_metadata(json.loads(raw))
    except RecursionError:
        raise InvalidRequest("X-Batch-Metadata is nested too deep") from None
    except ValueError as e:  # not JSON, or over a bound (json's errors are ValueErrors)
        raise InvalidRequest(f"X-Batch-Metadata: {e}") from None


async def read_ndjson(
    request: Request,
    ingest: Ingest,
    response: Response,
    hook: WebhookSpec | None,
    metadata: Any = None,
) -> None:
    """The body as it arrives, ``READ_CHUNK`` bytes at a time, each chunk
    checked in a worker thread while the next one is read and the jobs of the
    one before are written (the body size limit is the middleware's:
    ``jobs/http/middleware.py``)."""
    start(ingest, response, hook, metadata)
    feed = ingest.intake.feed
    parsing: asyncio.Future[list[Frame]] | None = None
    buf: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            buf.append(chunk)
            size += len(chunk)
            if size >= READ_CHUNK:
                made = await parsing if parsing is not None else []
                parsing = asyncio.ensure_future(asyncio.to_thread(feed, b"".join(buf)))
                buf, size = [], 0
                await ingest.send(made)  # written while the next chunk is checked
        if parsing is not None:
            await ingest.send(await parsing)
    finally:
        if parsing is not None and not parsing.done():
            await asyncio.wait([parsing])  # the thread ends (its frames are not wanted)
            if not parsing.cancelled():
                parsing.exception()  # seen: an error of its own is not the one raised
    await ingest.feed(feed, b"".join(buf), True)


async def read_whole(request: Request, limit: int) -> bytes:
    """A body read whole, at most ``limit`` bytes (413, before reading when
    its Content-Length says so), not kept by the request once parsed."""
    too_large = TooLarge(
        f"a batch sent as one JSON body is at most {limit} bytes "
        "(INTERQ_MAX_JSON_BATCH_BYTES); send a larger one as NDJSON "
        "(Content-Type: application/x-ndjson, one job per line), read as a stream"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


async def read_json(request: Request, ingest: Ingest, response: Response) -> None:
    """A JSON body (at most ``INTERQ_MAX_JSON_BATCH_BYTES``), parsed whole in a
    worker thread; its jobs checked ``JSON_SLICE`` at a time while the ones
    before are written."""
    raw = await read_whole(request, ingest.svc.settings.max_json_batch_bytes)
    body = await asyncio.to_thread(BatchCreate.model_validate_json, raw)
    del raw
    start(ingest, response, body.webhook, body.metadata)
    for i in range(0, len(body.jobs), JSON_SLICE):
        await ingest.feed(ingest.intake.feed_items, body.jobs[i : i + JSON_SLICE], i + 1)


@router.get("/v1/batches/{batch_id}", responses=errors(404))
async def get_batch(
    batch_id: str, s: Svc, t: Tenant, request: Request, wait: events.Wait = None
) -> Any:
    """The batch's counts by status, its token usage and its webhook state; with
    ``?wait=SECONDS``, once its status changes (at once if final)."""
    return await events.waited_batch(request, s, t, batch_id, wait)


@router.get("/v1/batches/{batch_id}/results", responses=errors(404))
async def batch_results(batch_id: str, s: Svc, t: Tenant) -> Any:
    """One NDJSON line per job, in input order, each with its result."""
    await own_batch(s, t, batch_id)
    return StreamingResponse(batches.iter_results(s, batch_id), media_type="application/x-ndjson")


@router.post("/v1/batches/{batch_id}/cancel", status_code=202, responses=errors(404, 409))
async def cancel_batch(batch_id: str, s: Svc, t: Tenant) -> Any:
    """Queued jobs end at once (never sent); running ones are cancelled upstream."""
    batch = await own_batch(s, t, batch_id)
    if batch.status != "in_progress":
        raise Conflict(f"batch is already {batch.status}")
    await batches.cancel_batch(s, batch)
    return await batches.batch_view(s, await own_batch(s, t, batch_id))


@router.post("/v1/batches/{batch_id}/resume", status_code=202, responses=errors(404, 409))
async def resume_batch(batch_id: str, s: Svc, t: Tenant) -> Any:
    """Send a paused batch's queued jobs after all (409 if it is not paused).
    A batch pauses when its first jobs were all refused upstream alike."""
    await batch_pause.resume(s, await own_batch(s, t, batch_id))
    return await batches.batch_view(s, await own_batch(s, t, batch_id))


@router.delete(
    "/v1/batches/{batch_id}", status_code=204, response_class=Response, responses=errors(404)
)
async def delete_batch(batch_id: str, s: Svc, t: Tenant) -> Response:
    """Delete the batch and every job of it: active jobs are cancelled first."""
    await retention.delete_batch(s, await own_batch(s, t, batch_id))
    return Response(status_code=204)
