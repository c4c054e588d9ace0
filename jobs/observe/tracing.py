"""OpenTelemetry traces of a job, from the POST that made it to each webhook
attempt, with the official SDK and its OTLP exporter.

Off unless the standard variables ask for it: ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), or ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console``; ``none`` is off), and never with
``OTEL_SDK_DISABLED=true``. The exporter, the sampler
(``OTEL_TRACES_SAMPLER``), the batch processor (``OTEL_BSP_*``) and the
resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) read their own
variables, as the SDK documents them.

A job keeps the W3C ``traceparent`` of the request that made it (the caller's
own, or a new trace's); each step a worker takes for it (the wait in the
queue, the create, each poll, the result's storage, the end, each webhook
attempt, which sends it on as ``traceparent``) is a span of that trace, with
the job, interaction and tenant ids as attributes. Off, nothing is recorded,
and a caller's ``traceparent`` still reaches its webhook unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, SpanKind, Tracer

_NOOP = NoOpTracer()
_provider: TracerProvider | None = None
# what the job's spans carry (the OpenTelemetry attribute names)
JOB, INTERACTION, TENANT = "interq.job_id", "interq.interaction_id", "interq.tenant"


def wanted(env: Mapping[str, str] = os.environ) -> str:
    """The exporter the environment asks for: "otlp", "console" or "" (off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    kind = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if kind:
        return "" if kind == "none" else kind.split(",")[0].strip()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return "otlp" if endpoint else ""


def setup(service: str, env: Mapping[str, str] = os.environ) -> bool:
    """Start tracing for this process if the environment asks for it."""
    kind = wanted(env)
    if not kind:
        return False
    exporter: SpanExporter
    if kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    name = env.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)
    return True


def use(provider: TracerProvider | None) -> None:
    """Record with ``provider`` from now on (None: stop recording)."""
    global _provider
    _provider = provider


def shutdown() -> None:
    """Send what is buffered (at a process's end)."""
    if _provider is not None:
        _provider.shutdown()


def recording() -> bool:
    """Whether spans are recorded (a provider is set)."""
    return _provider is not None


def tracer() -> Tracer:
    return _provider.get_tracer("interq") if _provider is not None else _NOOP


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span ("" when there is none)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return ""  # the common case with tracing off: no propagator run
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def context_of(traceparent: str) -> Context | None:
    return propagate.extract({"traceparent": traceparent}) if traceparent else None


def inject(headers: dict[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``."""
    propagate.inject(headers)


@contextlib.contextmanager
def span(
    name: str,
    traceparent: str = "",
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    **attributes: Any,
) -> Iterator[Span]:
    """A span of the trace ``traceparent`` names (a new trace with "").
    Attributes that are None or "" are left out."""
    attrs = {k: v for k, v in attributes.items() if v is not None and v != ""}
    with tracer().start_as_current_span(
        name,
        context=context_of(traceparent),
        kind=kind,
        attributes=attrs,
    ) as s:
        yield s


def job_attributes(job: Any) -> dict[str, Any]:
    """``interq.job_id``, ``interq.interaction_id`` and ``interq.tenant`` of a job."""
    return {
        JOB: job.id,
        INTERACTION: getattr(job, "interaction_id", "") or None,
        TENANT: job.tenant,
    }


def job_span(name: str, job: Any, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
    """A span of ``job``'s trace, with its ids as attributes; nothing at all
    while nothing is recorded (a worker's steps and polls carry no context on)."""
    if _provider is None:
        return contextlib.nullcontext(INVALID_SPAN)
    attrs = {**job_attributes(job), **attributes}
    return span(name, getattr(job, "traceparent", ""), **attrs)


def queued_span(job: Any, until: float | None = None) -> None:
    """The wait in the queue, as a span from the job's creation to now."""
    if _provider is None or not job.traceparent:
        return
    s = tracer().start_span(
        "interq.queued",
        context=context_of(job.traceparent),
        attributes={k: v for k, v in job_attributes(job).items() if v is not None},
        start_time=int(job.created_at * 1e9),
    )
    s.end(end_time=int((until or time.time()) * 1e9))


def webhook_span(event: Any, event_id: str) -> contextlib.AbstractContextManager[Span]:
    """A webhook attempt's span, in its owner's trace."""
    attrs = {JOB: event.job_id, TENANT: event.tenant, "interq.event_id": event_id}
    return span("interq.webhook", event.traceparent, kind=SpanKind.CLIENT, **attrs)


P = ParamSpec("P")
R = TypeVar("R")


def job_step(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run an async step ``f(svc, job, ...)`` in a span of the job's trace."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with job_span(name, args[1]):
                return await fn(*args, **kwargs)

        return inner

    return wrap
