"""Schemathesis against the app's own /openapi.json: no 5xx, and every response
matches the schema the API publishes. Bounded examples so it stays fast."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from jobs.settings import Settings

MAX_EXAMPLES = int(os.environ.get("INTERQ_FUZZ_EXAMPLES", "25"))


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: object, value: object) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


@pytest.fixture()
def fuzz_app(settings: Settings) -> Iterator[object]:
    """The real app with its lifespan run, for the synchronous schemathesis runner."""
    from api import create_app

    app = create_app(settings)
    loop = asyncio.new_event_loop()
    ctx = app.router.lifespan_context(app)
    loop.run_until_complete(ctx.__aenter__())
    try:
        yield app
    finally:
        loop.run_until_complete(ctx.__aexit__(None, None, None))
        loop.close()


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def fuzz_operation(operation: Any, seen: dict[str, set[int]]) -> None:
    """Run bounded examples against one operation; raises on the first failure."""
    name = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call()
        seen.setdefault(name, set()).add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()


def test_openapi_fuzz(fuzz_app: object) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    failures: list[str] = []
    seen: dict[str, set[int]] = {}
    for op in schema.get_all_operations():
        operation = op.ok()
        if operation.path == "/metrics":
            continue
        try:
            fuzz_operation(operation, seen)
        except Exception as e:  # keep fuzzing the other operations
            failures.append(f"{operation.method.upper()} {operation.path}: {e}")
    assert not failures, "\n\n".join(failures[:10])
    assert len(seen) >= 15, seen  # every route was exercised
    assert all(max(codes) < 500 for codes in seen.values()), seen
