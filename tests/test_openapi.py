"""The OpenAPI schema says what each route can answer: a route that needs the
tenant's key declares 401 and 429 and the bearer scheme, one that does not
(health, metrics, the Gemini API's own webhook) declares neither; a route on
one object declares its 404; every declared error has the ``{"error": ...}``
body. And the answers match: a tenant route without a key really is a 401 in
that shape, the upstream webhook really is 404 when it is not configured and
400 ``invalid_webhook`` for a bad signature."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import SecretStr

from jobs.dev.harness import free_port
from jobs.http import deps
from jobs.http.app import ROUTERS
from jobs.settings import Settings
from tests.helpers import app_client

NO_KEY = {"/healthz", "/readyz", "/metrics", "/v1/upstream/webhook"}


def needs_tenant(d: Dependant) -> bool:
    return any(sub.call is deps.tenant or needs_tenant(sub) for sub in d.dependencies)


@pytest.fixture()
def app_and_schema(settings: Settings) -> tuple[Any, dict[str, Any]]:
    from api import create_app

    app = create_app(settings.model_copy(update={"api_keys": {"k-test": "team-a"}}))
    return app, app.openapi()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


def test_tenant_routes_declare_401_429_and_the_bearer_scheme(
    app_and_schema: tuple[Any, dict[str, Any]],
) -> None:
    _, schema = app_and_schema
    tenant_routes = {
        (r.path, m.lower())
        for router in ROUTERS
        for r in router.routes
        if isinstance(r, APIRoute) and r.include_in_schema and needs_tenant(r.dependant)
        for m in r.methods
    }
    assert ("/v1/jobs", "post") in tenant_routes and len(tenant_routes) > 15
    for path, method, op in operations(schema):
        responses = op["responses"]
        if (path, method) in tenant_routes:
            assert {"401", "429"} <= set(responses), f"{method} {path}"
            assert op.get("security") == [{"HTTPBearer": []}], f"{method} {path}"
        else:
            assert path in NO_KEY, f"{method} {path} has no tenant and is not meant to"
            assert "401" not in responses and "security" not in op, f"{method} {path}"


def test_routes_on_one_object_declare_404_and_errors_have_the_error_body(
    app_and_schema: tuple[Any, dict[str, Any]],
) -> None:
    _, schema = app_and_schema
    for path, method, op in operations(schema):
        if "{" in path:
            assert "404" in op["responses"], f"{method} {path}"
        for code, answer in op["responses"].items():
            if code.startswith(("4", "5")):
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), f"{method} {path} {code}"


def test_the_upstream_webhook_is_in_the_schema_with_its_own_errors(
    app_and_schema: tuple[Any, dict[str, Any]],
) -> None:
    _, schema = app_and_schema
    op = schema["paths"]["/v1/upstream/webhook"]["post"]
    assert {"204", "400", "404"} <= set(op["responses"])


async def call(settings: Settings, method: str, path: str, **kw: Any) -> httpx.Response:
    async with app_client(settings) as c:
        return await c.request(method, path, **kw)


async def test_a_declared_401_is_what_a_call_without_a_key_gets(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": {"k-test": "team-a"}})
    r = await call(keyed, "GET", "/v1/jobs/some-id")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


async def test_the_upstream_webhook_answers_404_unconfigured_and_400_unsigned(
    settings: Settings,
) -> None:
    r = await call(settings, "POST", "/v1/upstream/webhook", content=b"{}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    configured = settings.model_copy(
        update={
            "upstream_webhook_secret": SecretStr("whsec_" + "A" * 32),
            "public_url": f"http://127.0.0.1:{free_port()}",
        }
    )
    r = await call(configured, "POST", "/v1/upstream/webhook", content=b"{}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_webhook"
