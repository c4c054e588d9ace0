"""The HTTP rendering of errors: every error answer is JSON,
``{"error": {"code", "message", ...extra}}``.

- an ``ApiError`` (``jobs/errors.py``) raised by a route or dependency: its
  ``http_status``, ``code``, message, extra fields and headers (one handler
  for the whole class tree);
- a request that does not validate: 422 ``invalid_request`` with ``details``;
- Starlette's own errors (unknown path, wrong method): 404 ``not_found``,
  405 ``method_not_allowed``; FastAPI's 400 for a body it cannot read (one
  nested too deep for the JSON parser): 400 ``invalid_request``;
- Redis refusing (read-only, out of memory, loading, unreachable): 503
  ``unavailable`` naming the kind, with Retry-After;
- anything unexpected: 500 ``internal`` with a request id;

and the readiness probe that says which Redis trouble it is.

``install(app)`` registers the handlers: those for ``ApiError``, validation
and Starlette errors, one for ``RedisError`` raised by a
route (Starlette's ExceptionMiddleware), and one for ``Exception``, which
Starlette makes ServerErrorMiddleware's handler, outermost, so that an error
from any middleware is JSON too. ServerErrorMiddleware re-raises after
answering: uvicorn then logs the traceback again and closes the connection, and
``httpx.ASGITransport`` raises it unless ``raise_app_exceptions=False``. So
``CatchAll``, the outermost middleware of our own, answers the same JSON and
does not re-raise; the handler is the backstop for middleware added outside it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import ApiError
from jobs.observe.metrics import redis_error_kind
from jobs.storage.keys import Keys

log = logging.getLogger("interq.api")


def api_error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The error body as a response, for code outside the routes (middleware,
    the handlers below); a route raises an ``ApiError`` instead."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def render(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers or None)


STARLETTE_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    429: "rate_limited",
}


async def api_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return render(exc)


async def invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    msg = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
    return api_error(422, "invalid_request", msg or "invalid request", details=details)


async def http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = STARLETTE_CODES.get(exc.status_code, "error")
    resp = api_error(exc.status_code, code, str(exc.detail))
    resp.headers.update(exc.headers or {})
    return resp


UNAVAILABLE = {  # kind -> (message, Retry-After seconds)
    "readonly": ("Redis is read-only (a failover in progress?); retry shortly", 2),
    "oom": ("Redis is out of memory and refuses writes; retry later", 10),
    "loading": ("Redis is loading its data after a restart; retry shortly", 5),
    "connection": ("Redis is unreachable; retry shortly", 2),
    "timeout": ("Redis is unreachable (timed out); retry shortly", 2),
    "other": ("Redis refused the request; retry shortly", 5),
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def unavailable(exc: BaseException, **extra: Any) -> JSONResponse:
    """503 ``unavailable`` naming the kind of Redis trouble, with Retry-After."""
    kind = redis_error_kind(exc)
    message, retry_after = UNAVAILABLE[kind]
    resp = api_error(503, "unavailable", message, **extra)
    resp.headers["Retry-After"] = str(retry_after)
    return resp


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


async def redis_trouble(request: Request, exc: Exception) -> JSONResponse:
    kind = redis_error_kind(exc)
    log.warning(
        "%s %s: redis %s (%s), answered 503",
        request.method,
        request.url.path,
        kind,
        type(exc).__name__,
        exc_info=exc if kind == "other" else None,  # a refusal nobody expects: show where
        extra={"error_kind": kind},
    )
    return unavailable(exc)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything that escaped the routes and middleware: a JSON 500 (503 for
    Redis trouble met in middleware). The traceback stays in the log."""
    if isinstance(exc, RedisError):
        return await redis_trouble(request, exc)
    rid = request_id(request)
    log.error(
        "%s %s: unexpected %s (request %s)",
        request.method,
        request.url.path,
        type(exc).__name__,
        rid,
        exc_info=exc,
        extra={"request_id": rid},
    )
    resp = api_error(
        500, "internal", "internal error; quote the request id if you report it", request_id=rid
    )
    resp.headers["X-Request-Id"] = rid
    return resp


class CatchAll:
    """ASGI middleware: an exception that escapes before the response started
    is answered by ``internal_error`` and not re-raised (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            response = await internal_error(Request(scope), exc)
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """The handlers; add ``CatchAll`` as the last (outermost) middleware too."""
    app.add_exception_handler(ApiError, api_exception)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RedisError, redis_trouble)
    app.add_exception_handler(Exception, internal_error)


UPSTREAM_KEY_MESSAGE = "the upstream refuses the API key (401/403); work is paused until it works"


async def readiness(probe: Redis, keys: Keys) -> JSONResponse | dict[str, str]:
    """Ready when Redis answers PING and takes a write (a short-lived key):
    a read-only, full or loading Redis answers PING but cannot take a job.
    While the upstream refuses the API key (the flag ``jobs/work/budgets.py``
    sets on a 401/403) it stays ready, since intake still works and taking the
    API out of service would refuse jobs too, and says ``"upstream_key":
    "refused"`` (else ``"ok"``): none is sent until the key works."""
    try:
        await probe.ping()
        await probe.set(keys.readyz, str(time.time()), px=10_000)
        refused = await probe.exists(keys.key_refused)
    except (RedisError, OSError) as e:
        kind = redis_error_kind(e)
        log.warning("readyz: redis %s (%s)", kind, type(e).__name__)
        return unavailable(e, detail=kind)
    if refused:
        return {"status": "ready", "upstream_key": "refused", "message": UPSTREAM_KEY_MESSAGE}
    return {"status": "ready", "upstream_key": "ok"}
