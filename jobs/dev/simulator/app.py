"""In-memory simulator of the Gemini Interactions API (dev, tests, benchmarks).

Speaks ``/{v1,v1beta}/interactions`` create/get/cancel/delete with the wire
shapes of the reference (steps schema, google.rpc-style errors, RetryInfo on
429, no Retry-After header). State lives in dicts in this process; time is
real ``time.monotonic()`` but every duration is configurable.

Per-interaction behaviour is picked by a directive anywhere in the input text,
``[sim key=value ...]`` (keys ``duration``, ``outcome``, ``output``), e.g.
``"Write a haiku [sim duration=0.5 outcome=failed]"``.

Faults (probabilities drawn from ``random.Random(seed)``, one draw per request
of an op in ``fault_ops``):

* ``429`` / ``5xx``: google-shaped error bodies (5xx alternates 500/503).
* ``timeout``: the server sleeps ``slow_s`` and then answers normally. For a
  create with ``faults_after_create=False`` the sleep happens first and the
  interaction is only created if the client is still connected; with
  ``faults_after_create=True`` it is created before the sleep (response lost).
* ``drop``: the server sends response headers and then aborts by raising
  :class:`SimulatedDrop`. Under uvicorn that closes the socket mid-response, so
  an httpx client sees ``httpx.RemoteProtocolError``; under
  ``httpx.ASGITransport`` the exception (a ``RemoteProtocolError`` subclass)
  reaches the client directly.

Webhooks (the API's own, reference section 9): when a background interaction
reaches ``completed``, ``failed``, ``cancelled`` (by its timeline or by the cancel
endpoint) or ``requires_action``, an ``interaction.<status>`` event is POSTed
once to every URI: the create body's ``webhook_config.uris`` if given (they are
used *instead of* the registered webhooks, as the SDK's ``WebhookConfig``
docstring says), else the project-level ``SimConfig.webhook_urls`` read when
the event fires. A ``loop.call_later`` timer armed at create time fires at the
end of the duration, so no GET is needed. Deliveries are background tasks.
Per-request ones (to ``webhook_config.uris``) carry, like the real API's, an
RS256 JWT in ``webhook-signature``: ``kid`` in its header, ``aud`` (the URI, or
``SimConfig.webhook_audience``), ``sub`` (the interaction id), ``jti`` (the
event id), ``iat`` and ``exp`` (``webhook_token_ttl_s`` later), signed with a
key the simulator makes at first use and serves at ``GET
/.well-known/jwks.json``. Project-level ones are signed in the Standard
Webhooks format with ``SimConfig.webhook_secret`` (sent unsigned when it is
None). ``webhook-id`` is one ``evt_...`` per
event, stable across retries and URIs; a failed attempt (non-2xx or a
connection error) is retried after each delay of ``webhook_retry_s`` and then
dropped. Every attempt is recorded in ``Simulator.webhook_log`` (``GET
/_sim/webhooks``). Faults never apply to webhooks. Not sent: events for
``incomplete``, ``budget_exceeded`` and ``requires_continuation`` (none is
documented), events for deleted interactions, and events for synchronous
(``background=false``) interactions.

Not simulated: SSE streaming (``stream=true`` gets a 400), agents'
environments beyond echoing, per-day quotas, ``include_input``, the
WebhookService endpoints and ``subscribed_events`` filtering.

This module is the HTTP side (routes, request log, serving); the state
machine is in ``lifecycle``, the rest in the sibling modules the package
docstring lists. Every public name importers used from here still is.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobs.dev.simulator import streaming
from jobs.dev.simulator.config import SimConfig, config_from_env
from jobs.dev.simulator.faults import QUIET_DROPS, SimulatedDrop
from jobs.dev.simulator.lifecycle import Simulator
from jobs.dev.simulator.scenarios import extract_texts, parse_directive
from jobs.dev.simulator.webhooks import WEBHOOK_EVENTS, WEBHOOK_TIMEOUT_S
from jobs.dev.simulator.wire import (
    CONTENT_TYPES,
    JSON,
    OUTCOMES,
    OUTPUTS,
    PENDING,
    PNG_B64,
    TERMINAL,
    WAV_B64,
    ApiError,
    error_body,
    retry_delay_str,
    retry_info,
    styled,
)

__all__ = [
    "CONTENT_TYPES",
    "JSON",
    "OUTCOMES",
    "OUTPUTS",
    "PENDING",
    "PNG_B64",
    "TERMINAL",
    "WAV_B64",
    "WEBHOOK_EVENTS",
    "WEBHOOK_TIMEOUT_S",
    "ApiError",
    "SimConfig",
    "SimulatedDrop",
    "Simulator",
    "config_from_env",
    "create_app",
    "error_body",
    "extract_texts",
    "parse_directive",
    "retry_delay_str",
    "retry_info",
    "serve",
]


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def _log_entry(sim: Simulator, op: str, iid: str | None, body: Any) -> JSON:
    """Append this request to ``sim.requests`` (its status filled in later)."""
    labels = (
        body.get("labels")
        if isinstance(body, dict)
        else (sim.interactions.get(iid or "") or {}).get("echo", {}).get("labels")
    )
    job = labels.get("interq_job") if isinstance(labels, dict) else None
    entry: JSON = {"t": time.time(), "op": op, "id": iid, "status": None, "fault": None}
    entry |= {"retry_delay_s": None, "job": job}
    sim.requests.append(entry)
    return entry


def _refusal(request: Request, cfg: SimConfig) -> tuple[JSON, int] | None:
    """(body, status) for an unknown API version or a wrong key, else None."""
    if request.path_params["ver"] not in ("v1", "v1beta"):
        return error_body(404, "Method not found."), 404
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if cfg.api_key is not None and key != cfg.api_key:
        return error_body(
            403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED"
        ), 403
    return None


def _run(sim: Simulator, op: str, iid: str | None, body: Any, entry: JSON) -> tuple[JSON, int]:
    """Run the operation: (body, status), an API error's shape on failure."""
    try:
        if op == "create":
            if not isinstance(body, dict):
                raise ApiError(400, "Invalid JSON payload received.")
            data, entry["id"] = sim.create(body)
        else:
            assert iid is not None
            data = {"get": sim.get, "cancel": sim.cancel, "delete": sim.delete}[op](iid)
    except ApiError as err:
        return error_body(err.code, err.message, err.status), err.code
    return data, 200


async def _serve(request: Request, op: str) -> Response:
    sim: Simulator = request.app.state.sim
    iid: str | None = request.path_params.get("iid")
    raw = await request.body()
    body: Any = None
    if op == "create":
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
    entry = _log_entry(sim, op, iid, body)

    def reply(answer: tuple[JSON, int]) -> Response:
        entry["status"] = answer[1]
        if answer[1] >= 400:
            return _json(styled(answer[0], sim.config.error_style), answer[1])
        return _json(*answer)

    refused = _refusal(request, sim.config)
    if refused is not None:
        return reply(refused)
    if op == "get" and request.query_params.get("stream") == "true":
        entry["op"], entry["status"] = "stream", 200
        return streaming.serve(sim, iid or "", request.query_params.get("last_event_id"))
    fault = entry["fault"] = sim.roll_fault(op)
    failed = sim.faults.error_for(fault, entry)
    if failed is not None:
        return reply(failed)
    stop = await sim.faults.before(fault, request, op, entry)
    if stop is not None:
        return stop
    if op == "create":
        over = sim.faults.daily_quota_error(entry) or sim.faults.quota_error(
            time.monotonic(), entry
        )
        if over is not None:
            return reply(over)
    answer = _run(sim, op, iid, body, entry)
    if answer[1] != 200:
        return reply(answer)
    stop = await sim.faults.after(fault)
    return stop if stop is not None else reply(answer)


async def _sim_admin(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    what = request.path_params["what"]
    if what == "requests" and request.method == "GET":
        return _json(sim.requests)
    if what == "webhooks" and request.method == "GET":
        return _json(sim.webhook_log)
    if what == "stats" and request.method == "GET":
        return _json(sim.stats())
    if what == "reset" and request.method == "POST":
        sim.reset()
        return _json({})
    if what != "config":
        return _json(error_body(404, "Not found."), 404)
    if request.method == "POST":
        try:
            sim.update_config(await request.json())
        except ApiError as err:
            return _json(error_body(err.code, err.message), err.code)
    return _json(asdict(sim.config) | {"fault_ops": sorted(sim.config.fault_ops)})


async def _jwks(request: Request) -> Response:
    """The public key of the per-request deliveries' JWTs."""
    sim: Simulator = request.app.state.sim
    return _json(sim.webhooks.key.jwks())


def create_app(config: SimConfig | None = None) -> Starlette:
    """Build the simulator app; its state is ``app.state.sim`` (a :class:`Simulator`)."""
    logging.getLogger("uvicorn.error").addFilter(QUIET_DROPS)
    routes = [
        Route("/_sim/{what}", _sim_admin, methods=["GET", "POST"]),
        Route("/.well-known/jwks.json", _jwks, methods=["GET"]),
        Route("/{ver}/interactions", partial(_serve, op="create"), methods=["POST"]),
        Route("/{ver}/interactions/{iid}", partial(_serve, op="get"), methods=["GET"]),
        Route("/{ver}/interactions/{iid}", partial(_serve, op="delete"), methods=["DELETE"]),
        Route("/{ver}/interactions/{iid}/cancel", partial(_serve, op="cancel"), methods=["POST"]),
    ]
    sim = Simulator(config or SimConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sim.aclose()  # no timer or delivery outlives the server

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim = sim
    return app


def serve(host: str = "127.0.0.1", port: int = 8090, config: SimConfig | None = None) -> None:
    """Run the simulator with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    serve(port=int(os.environ.get("INTERQ_SIM_PORT", "8090")), config=config_from_env())
