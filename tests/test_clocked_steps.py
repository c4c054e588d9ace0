"""The step decisions on a fake clock: the poll engine, the delivery engine and
the submit step, driven one turn at a time against a real Redis, with the
upstream (and the receivers) an ``httpx.MockTransport``. Nothing waits: a
delay is checked as the due time written to the index, read off the clock
the engine was given, and the next turn happens when the test moves the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from arq import Retry

from jobs.delivery.engine import DeliveryEngine
from jobs.domain.lifecycle import finish
from jobs.domain.records import EventState
from jobs.domain.statuses import JobStatus
from jobs.observe import metrics
from jobs.services import Services
from jobs.work.poller import CANCEL_404_MAX_TRIES, PollEngine
from jobs.work.steps import submit
from tests.fakeclock import (
    FakeClock,
    Upstream,
    clocked_services,
    due_ms,
    error,
    interaction,
    queued_job,
    reread,
    running_job,
    turn,
)

POLL_INITIAL_S, POLL_MULTIPLIER = 2.0, 2.0
RETRY_INITIAL_S = 10.0
WEBHOOK_SCHEDULE_S = [5.0, 50.0]


@pytest.fixture()
async def svc(clean_redis: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Services]:
    async with clocked_services(
        clean_redis,
        tmp_path,
        upstream,
        poll_initial_s=POLL_INITIAL_S,
        poll_multiplier=POLL_MULTIPLIER,
        poll_jitter=0.0,
        poll_max_s=600.0,
        retry_initial_s=RETRY_INITIAL_S,
        retry_max_s=600.0,
        webhook_allow_private=True,
        webhook_schedule_s=WEBHOOK_SCHEDULE_S,
        webhook_jitter=0.0,
        webhook_per_destination=2,
    ) as s:
        yield s


# --------------------------------------------------------------------------- polls


async def test_backoff_grows_between_polls_and_the_next_due_time_is_read_from_the_clock(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await running_job(svc, clock)
    upstream.answers["get"] = [interaction(job.id, "in_progress")]
    engine, polls = PollEngine(svc, clock), svc.store.keys.polls
    gaps = []
    for n in range(1, 4):
        await turn(engine)
        assert upstream.ops.count("get") == n
        gap = POLL_INITIAL_S * POLL_MULTIPLIER**n  # no jitter in these settings
        assert await due_ms(svc, polls, job.id) == clock.ms(gap)
        gaps.append(gap)
        clock.advance(gap - 0.01)
        await turn(engine)  # not due yet on the fake clock: no GET
        assert upstream.ops.count("get") == n
        clock.advance(0.01)
    assert gaps == sorted(gaps) and len(set(gaps)) == 3
    assert (await reread(svc, job.id)).poll_count == 3


async def test_429_on_a_poll_with_a_retry_delay_in_its_body_sets_the_next_due_time(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await running_job(svc, clock)
    upstream.answers["get"] = [error(429, retry_delay="45s"), interaction(job.id, "in_progress")]
    engine = PollEngine(svc, clock)
    await turn(engine)
    due = await due_ms(svc, svc.store.keys.polls, job.id)
    assert due is not None
    # the body's 45 s, plus at most 10 % jitter; the own backoff would be <= 10 s
    assert clock.ms(45.0) <= due <= clock.ms(45.0 * 1.1)
    stored = await reread(svc, job.id)
    assert stored.poll_errors == 1 and stored.last_poll_error == "error 429"
    clock.advance(44.9)
    await turn(engine)
    assert upstream.ops == ["get"]  # still waiting the delay
    clock.advance(45.0 * 1.1 - 44.9)
    await turn(engine)
    assert upstream.ops == ["get", "get"]
    assert (await reread(svc, job.id)).poll_errors == 0  # reset by the good answer


async def test_429_on_a_create_with_a_retry_delay_in_its_body_defers_the_submit_by_it(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await queued_job(svc, clock)
    upstream.answers["create"] = [error(429, retry_delay="30s")]
    with pytest.raises(Retry) as retry:
        await submit({"svc": svc, "clock": clock}, job.id)
    assert retry.value.defer_score is not None
    assert 30_000 <= retry.value.defer_score <= 33_000
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.queued and stored.submit_attempts == 1


async def test_a_submit_past_the_deadline_on_the_clock_expires_without_a_create(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await queued_job(svc, clock, timeout_s=60.0)
    clock.advance(61.0)
    await submit({"svc": svc, "clock": clock}, job.id)
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.expired and stored.error["code"] == "deadline"
    assert upstream.ops == []


async def test_5xx_is_retried_with_growing_backoff_then_the_answer_is_taken(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await running_job(svc, clock)
    done = interaction(job.id, "completed", steps=[
        {"type": "model_output", "content": [{"type": "text", "text": "ok"}]}
    ])  # fmt: skip
    upstream.answers["get"] = [error(503), error(502), done]
    engine, polls = PollEngine(svc, clock), svc.store.keys.polls
    for errors in (1, 2):
        await turn(engine)
        stored = await reread(svc, job.id)
        assert stored.status == JobStatus.running and stored.poll_errors == errors
        due = await due_ms(svc, polls, job.id)
        base = RETRY_INITIAL_S * 2 ** (errors - 1)  # backoff with jitter in [base/2, base]
        assert due is not None and clock.ms(base / 2) <= due <= clock.ms(base)
        clock.advance(due / 1000 - clock.time())
    await turn(engine)
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.completed and stored.output_text == "ok"
    assert upstream.ops == ["get"] * 3
    assert await due_ms(svc, polls, job.id) is None


async def test_a_running_job_past_its_deadline_is_cancelled_upstream_and_expires(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await running_job(svc, clock, timeout_s=60.0)
    upstream.answers["get"] = [interaction(job.id, "in_progress")]
    upstream.answers["cancel"] = [interaction(job.id, "cancelled")]
    engine = PollEngine(svc, clock)
    await turn(engine)
    assert upstream.ops == ["get"]  # before the deadline: polled
    clock.advance(61.0)
    await turn(engine)
    assert upstream.ops == ["get", "cancel"]  # past it: cancelled, not polled
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.expired and stored.error["code"] == "deadline"
    assert await due_ms(svc, svc.store.keys.polls, job.id) is None


async def test_a_paused_job_expires_at_its_deadline(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await running_job(svc, clock, timeout_s=600.0)
    call = {"type": "function_call", "id": "c1", "name": "get_weather", "arguments": {}}
    upstream.answers["get"] = [interaction(job.id, "requires_action", steps=[call])]
    engine, polls = PollEngine(svc, clock), svc.store.keys.polls
    await turn(engine)
    paused = await reread(svc, job.id)
    assert paused.status == JobStatus.requires_action
    assert await due_ms(svc, polls, job.id) == int(paused.deadline * 1000)
    clock.advance(paused.deadline - clock.time() - 1.0)
    await turn(engine)
    assert (await reread(svc, job.id)).status == JobStatus.requires_action
    assert upstream.ops == ["get"]  # a paused job is not polled
    clock.advance(2.0)
    await turn(engine)
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.expired and stored.error["code"] == "deadline"
    assert stored.pending_calls and stored.pending_calls[0]["id"] == "c1"
    assert upstream.ops == ["get", "cancel"]


async def test_a_cancel_answered_404_is_retried_then_noted(
    svc: Services, clock: FakeClock, upstream: Upstream
) -> None:
    job = await running_job(svc, clock)
    await svc.store.set_fields(job.id, {"cancel_requested": True})
    upstream.answers["cancel"] = [error(404)]
    engine, polls = PollEngine(svc, clock), svc.store.keys.polls
    for attempt in range(1, CANCEL_404_MAX_TRIES):
        await turn(engine)
        assert upstream.ops == ["cancel"] * attempt
        stored = await reread(svc, job.id)
        assert stored.status == JobStatus.running and stored.cancel_attempts == attempt
        assert await due_ms(svc, polls, job.id) == clock.ms(2.0 * attempt)
        clock.advance(2.0 * attempt)
    await turn(engine)
    assert upstream.ops == ["cancel"] * CANCEL_404_MAX_TRIES  # never a GET in between
    stored = await reread(svc, job.id)
    assert stored.status == JobStatus.cancelled and "404" in stored.note
    assert await due_ms(svc, polls, job.id) is None


# --------------------------------------------------------------------------- deliveries


class Receivers:
    """Webhook receivers behind an ``httpx.MockTransport``, told apart by port:
    SLOW never answers until released, FAIL answers 503, any other 204."""

    SLOW, FAIL = 8001, 8002

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.open_slow = 0
        self.most_open_slow = 0
        self.seen: list[tuple[int, str]] = []  # (port, webhook-id)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or 80
        self.seen.append((port, request.headers["webhook-id"]))
        if port == self.FAIL:
            return httpx.Response(503)
        if port == self.SLOW:
            self.open_slow += 1
            self.most_open_slow = max(self.most_open_slow, self.open_slow)
            await self.release.wait()
            self.open_slow -= 1
        return httpx.Response(204)


@pytest.fixture()
async def receivers(svc: Services) -> AsyncIterator[Receivers]:
    r = Receivers()
    await svc.http.aclose()
    svc.http = httpx.AsyncClient(transport=httpx.MockTransport(r.handle))
    yield r
    r.release.set()


async def finished_with_webhook(svc: Services, clock: FakeClock, port: int) -> str:
    """A completed job whose webhook goes to 127.0.0.1:``port``: its event id."""
    job = await running_job(svc, clock, webhook=f"http://127.0.0.1:{port}/hook")
    assert await finish(svc, job, JobStatus.completed)
    return (await reread(svc, job.id)).event_id


async def test_a_failed_webhook_delivery_is_due_again_per_the_schedule_on_the_clock(
    svc: Services, clock: FakeClock, receivers: Receivers
) -> None:
    ev = await finished_with_webhook(svc, clock, Receivers.FAIL)
    clock.advance(1.0)  # the outbox wrote the event due at the real now
    engine, index = DeliveryEngine(svc, clock), svc.store.keys.deliveries
    for n, delay in enumerate(WEBHOOK_SCHEDULE_S, start=1):
        await turn(engine)
        assert len(receivers.seen) == n
        event = await svc.store.get_event(ev)
        assert event is not None and event.state == EventState.pending and event.attempts == n
        assert await due_ms(svc, index, ev) == clock.ms(delay)  # no jitter in these settings
        clock.advance(delay - 0.01)
        await turn(engine)
        assert len(receivers.seen) == n  # not due yet on the fake clock
        clock.advance(0.01)
    await turn(engine)  # the last attempt of the schedule
    event = await svc.store.get_event(ev)
    assert event is not None and event.state == EventState.dead and event.attempts == 3
    assert await due_ms(svc, index, ev) is None


async def settle_all_but(engine: DeliveryEngine, left: int) -> None:
    """Wait for the engine's tasks to end until only ``left`` are in progress
    (woken by each task's end, not by a timer; the timeout only stops a hang)."""
    pending = set(engine.active.values())
    async with asyncio.timeout(10):
        while len(pending) > left:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await engine.flush()


async def test_a_receiver_that_never_answers_delays_only_its_own_events(
    svc: Services, clock: FakeClock, receivers: Receivers
) -> None:
    bound = svc.settings.webhook_per_destination
    slow = [await finished_with_webhook(svc, clock, Receivers.SLOW) for _ in range(5)]
    fast = [await finished_with_webhook(svc, clock, 8003) for _ in range(3)]
    clock.advance(1.0)
    engine, index = DeliveryEngine(svc, clock), svc.store.keys.deliveries
    deferred_before = metrics.WEBHOOK_DEFERRED._value.get()
    await engine.step()
    await settle_all_but(engine, bound)  # the slow receiver holds `bound` attempts
    for e in fast:  # delivered while the slow receiver still holds its attempts
        event = await svc.store.get_event(e)
        assert event is not None and event.state == EventState.delivered, e
    waiting = [e for e in slow if e not in engine.active]
    assert len(engine.active) == bound and len(waiting) == len(slow) - bound
    for e in waiting:  # back in the index about one attempt later, no attempt counted
        event = await svc.store.get_event(e)
        assert event is not None and event.state == EventState.pending and event.attempts == 0
        due = await due_ms(svc, index, e)
        assert due is not None and clock.ms(0.5) <= due <= clock.ms(0.75)
    assert metrics.WEBHOOK_DEFERRED._value.get() == deferred_before + len(waiting)
    clock.advance(1.0)
    await engine.step()  # due again, destination still at its bound: deferred again
    await settle_all_but(engine, bound)
    assert receivers.most_open_slow == bound
    assert len([p for p, _ in receivers.seen if p == Receivers.SLOW]) == bound
    receivers.release.set()
    await settle_all_but(engine, 0)
    clock.advance(1.0)
    await turn(engine)
    for e in slow:
        event = await svc.store.get_event(e)
        assert event is not None and event.state == EventState.delivered, e
    assert receivers.most_open_slow == bound
