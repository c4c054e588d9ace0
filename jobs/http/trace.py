"""ASGI middleware: each ``/v1/`` request is a server span (``jobs/observe/tracing.py``),
in the trace of the caller's W3C ``traceparent`` when it sends one, named by
its route (``POST /v1/jobs``) once routing has found it. The route runs in
that span, so a job created there keeps its ``traceparent``. With tracing off
the caller's ``traceparent`` is still the current context (nothing recorded).
"""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.observe import tracing


class TraceRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", [])
            if k in (b"traceparent", b"tracestate")
        }
        if not carrier and not tracing.recording():
            await self.app(scope, receive, send)  # nothing to record, nothing to carry
            return
        method = scope["method"]
        ctx = propagate.extract(carrier)
        with tracing.tracer().start_as_current_span(
            f"{method} /v1", context=ctx, kind=SpanKind.SERVER
        ) as span:

            async def send_status(msg: Message) -> None:
                if msg["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", msg["status"])
                await send(msg)

            try:
                await self.app(scope, receive, send_status)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "/v1"
                span.update_name(f"{method} {template}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", template)
