"""OpenTelemetry: one trace from the POST to the webhook delivery.

The API (in process) and the worker (in process) record into the SDK's
``InMemorySpanExporter``; the webhook receiver is a real loopback server and
must get the ``traceparent`` of that same trace. With tracing off, a
caller's ``traceparent`` still reaches its webhook unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobs.delivery.signing import generate_secret
from jobs.observe import tracing
from tests.helpers import Receiver, settled_event, wait_terminal

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


def hooked(text: str, receiver: Receiver) -> dict[str, Any]:
    receiver.secret = generate_secret()
    webhook = {"url": receiver.url, "secret": receiver.secret}
    return {"interaction": {"model": "sim-model", "input": text}, "webhook": webhook}


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


async def test_one_trace_from_the_post_to_the_webhook(
    api: httpx.AsyncClient, worker: None, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    body = hooked("traced [sim duration=0.1]", receiver)
    r = await api.post("/v1/jobs", json=body, headers={"traceparent": CALLER})
    jid = r.json()["id"]
    job = (await wait_terminal(api, [jid]))[jid]
    assert job["status"] == "completed"
    assert (await settled_event(api, jid))["state"] == "delivered"

    [delivery] = receiver.snapshot()
    sent = delivery.headers["traceparent"]
    assert sent.split("-")[1] == CALLER_TRACE and sent != CALLER  # the webhook span's own id

    ours = [s for s in spans.get_finished_spans() if s.context.trace_id == int(CALLER_TRACE, 16)]
    names = [s.name for s in ours]
    for name in ("POST /v1/jobs", "interq.queued", "interq.create", "interq.poll"):
        assert name in names, names
    for name in ("interq.store_result", "interq.finish", "interq.webhook"):
        assert name in names, names
    webhook = next(s for s in ours if s.name == "interq.webhook")
    assert f"{webhook.context.span_id:016x}" == sent.split("-")[2]
    worker_spans = [s for s in ours if s.name.startswith("interq.")]
    assert all(s.attributes and s.attributes["interq.job_id"] == jid for s in worker_spans)
    create = next(s for s in ours if s.name == "interq.create")
    assert create.attributes and create.attributes["interq.tenant"] == "default"
    poll = next(s for s in ours if s.name == "interq.poll")
    assert poll.attributes and poll.attributes["interq.interaction_id"] == job["interaction_id"]


async def test_a_post_without_traceparent_starts_a_trace(
    api: httpx.AsyncClient, worker: None, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    jid = (await api.post("/v1/jobs", json=hooked("new trace", receiver))).json()["id"]
    await settled_event(api, jid)
    post = next(s for s in spans.get_finished_spans() if s.name == "POST /v1/jobs")
    [delivery] = receiver.snapshot()
    assert delivery.headers["traceparent"].split("-")[1] == f"{post.context.trace_id:032x}"


async def test_with_tracing_off_the_callers_traceparent_reaches_the_webhook(
    api: httpx.AsyncClient, worker: None, receiver: Receiver
) -> None:
    body = hooked("untraced [sim duration=0.05]", receiver)
    jid = (await api.post("/v1/jobs", json=body, headers={"traceparent": CALLER})).json()["id"]
    await settled_event(api, jid)
    [delivery] = receiver.snapshot()
    assert delivery.headers["traceparent"] == CALLER


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert tracing.wanted({}) == ""
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == "otlp"
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert (
        tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) == ""
    )
    assert tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == ""
