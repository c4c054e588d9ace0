"""Anything unexpected is a JSON 500 with a request id (Redis trouble a 503),
never a traceback: from a route, from a middleware inside interq's own, and from
one outside it, through ASGITransport and through uvicorn. A middleware outside
ours (``outer``) meets Starlette's ServerErrorMiddleware handler, which answers
the same but re-raises."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ReadOnlyError
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

from jobs.settings import Settings
from tests.conftest import free_port
from tests.helpers import AppServer
from tests.test_redis_trouble import assert_unavailable


async def boom() -> None:
    raise RuntimeError("secret detail that must not leak")


async def faulty(request: Any, call_next: Any) -> Any:
    if request.url.path.endswith("/_mw_boom"):
        raise KeyError("secret detail that must not leak")
    if request.url.path.endswith("/_mw_redis"):
        raise ReadOnlyError("You can't write against a read only replica.")
    return await call_next(request)


async def outer(request: Any, call_next: Any) -> Any:
    if request.url.path.startswith("/outer/"):
        return await faulty(request, call_next)
    return await call_next(request)


@pytest.fixture()
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    from api import create_app

    app = create_app(settings)
    app.add_api_route("/_boom", boom)
    # innermost, inside interq's own middleware, and outermost, outside it
    app.user_middleware.append(Middleware(BaseHTTPMiddleware, dispatch=faulty))
    app.add_middleware(BaseHTTPMiddleware, dispatch=outer)
    async with app.router.lifespan_context(app):
        yield app


def check_500(r: httpx.Response) -> None:
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "secret detail" not in r.text and "Traceback" not in r.text
    err = r.json()["error"]
    assert err["code"] == "internal" and err["request_id"]
    assert r.headers["x-request-id"] == err["request_id"]


async def check(c: httpx.AsyncClient, outer: bool) -> None:
    check_500(await c.get("/_boom"))
    r = await c.get("/_mw_boom", headers={"x-request-id": "req-42"})
    check_500(r)
    assert r.json()["error"]["request_id"] == "req-42"
    assert_unavailable(await c.get("/_mw_redis"), "readonly")
    if outer:
        check_500(await c.get("/outer/_mw_boom"))
        assert_unavailable(await c.get("/outer/_mw_redis"), "readonly")
    assert (await c.get("/healthz")).status_code == 200


async def test_json_500_through_asgi_transport(app: FastAPI) -> None:
    t = httpx.ASGITransport(app=app)  # nothing re-raised from inside ours
    async with httpx.AsyncClient(transport=t, base_url="http://interq") as c:
        await check(c, outer=False)
    t = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=t, base_url="http://interq") as c:
        await check(c, outer=True)


async def test_json_500_through_uvicorn(app: FastAPI) -> None:
    server = AppServer(app, free_port(), lifespan="on")
    server.start()
    try:
        # no 5 s default timeout: on a loaded machine the first request may wait
        # for the SDK models the app's start is still importing
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            await check(c, outer=False)  # one kept-alive connection throughout
        # uvicorn closes the connection after a re-raised error: one per request
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, limits=fresh, timeout=60) as c:
            await check(c, outer=True)
    finally:
        server.stop()
