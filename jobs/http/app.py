"""The FastAPI app: services opened and closed with the app's lifespan, the
body-size limit and the JSON error handlers around every route, and the
routers of ``jobs/http/routes/`` and the ops page."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI

from jobs.domain import checks
from jobs.http import errors as http_errors
from jobs.http.deps import DEFAULT_TENANT
from jobs.http.middleware import BodyLimit
from jobs.http.routes import batches, events, jobs, ops, rerun, upstream, webhooks
from jobs.http.trace import TraceRequests
from jobs.observe import tracing
from jobs.services import Services, redis_client
from jobs.settings import Settings, get_settings
from jobs.ui import page as ui

log = logging.getLogger("interq.api")


ROUTERS: tuple[APIRouter, ...] = (jobs.router, batches.router, rerun.router, webhooks.router)
ROUTERS += (upstream.router, ops.router, events.router, ui.router)


_frozen = False


def _freeze_startup_objects(_: object) -> None:
    """Once the start-up imports are done (the SDK's models are many thousands
    of objects), move everything alive to the collector's permanent generation:
    a full collection no longer walks them, which otherwise paused the API
    ~100 ms at a time under load (the p99 of POST /v1/jobs). Once per process."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def create_app(
    settings: Settings | None = None, upstream_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The intake API. ``upstream_transport`` replaces the upstream's HTTP
    transport (tests pass an ``httpx.MockTransport``)."""
    cfg = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.svc = Services.open(cfg, upstream_transport=upstream_transport)
        app.state.probe = redis_client(cfg, retries=0, socket_timeout=5.0)  # for /readyz
        # the SDK's request models (seconds to import), loaded beside the start so
        # that the first create does not pay for them
        warm = asyncio.create_task(asyncio.to_thread(checks.request_models))
        warm.add_done_callback(_freeze_startup_objects)
        traced = tracing.setup("interq-api")  # only when OTEL_* asks for it
        if not cfg.api_keys:
            log.warning(
                "no INTERQ_API_KEYS configured: serving one tenant, %r, without auth",
                DEFAULT_TENANT,
            )
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a failed import fails the first create
                await warm
            await app.state.probe.aclose()
            await app.state.svc.close()
            if traced:
                tracing.shutdown()

    app = FastAPI(title="interq", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        BodyLimit, max_bytes=cfg.max_body_bytes, large=("/v1/batches", cfg.max_batch_bytes)
    )
    app.add_middleware(http_errors.CatchAll)  # errors become JSON
    app.add_middleware(TraceRequests)  # outermost: a request's span sees its answer
    http_errors.install(app)  # every error answer is JSON (jobs/http/errors.py)
    for r in ROUTERS:
        app.include_router(r)
    return app
