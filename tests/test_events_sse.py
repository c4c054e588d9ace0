"""Watching without polling: the SSE streams of a job and a batch see every
change of status in order, resume with ``Last-Event-ID``, and ``?wait=``
answers on a change. The API runs under uvicorn (its lifespan starts the
one subscription); the test moves the job through its transitions itself."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from api import create_app
from jobs.dev.procs import free_port
from jobs.domain import batches
from jobs.domain import lifecycle as outcomes
from jobs.domain.records import Event, EventState, Job
from jobs.domain.statuses import JobStatus
from jobs.services import Services
from jobs.settings import Settings, hash_api_key
from tests.helpers import AppServer, hand_event

BODY = {"interaction": {"model": "sim-model", "input": "hi"}}


class Served:
    """The API under uvicorn, a client, the test's own services, and a spy on
    the hub's waiters (so a test knows a watcher is waiting, without sleeping)."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.server = AppServer(self.app, free_port(), lifespan="on")
        self.svc = Services.open(settings)
        self.registered = threading.Event()
        self.released = threading.Event()
        self.client = httpx.AsyncClient(base_url=self.server.url, timeout=30)

    def spy(self) -> None:
        hub = self.app.state.watch_hub
        real = hub.waiter

        @contextlib.contextmanager
        def waiter(ref: str) -> Iterator[asyncio.Event]:
            try:
                with real(ref) as ev:
                    self.registered.set()
                    yield ev
            finally:
                self.released.set()

        hub.waiter = waiter

    async def waiting(self) -> None:
        assert await asyncio.to_thread(self.registered.wait, 30)
        self.registered.clear()


@pytest.fixture()
async def served(settings: Settings) -> AsyncIterator[Served]:
    changes = {"watch_counts_interval_s": 0.0, "watch_heartbeat_s": 0.5}
    s = Served(settings.model_copy(update=changes))
    s.server.start()
    s.spy()
    try:
        yield s
    finally:
        await s.client.aclose()
        await s.svc.close()
        s.server.stop()


def event_for(job: Job) -> Event:
    return hand_event(job, EventState.no_endpoint)


async def job_of(served: Served, job_id: str) -> Job:
    job = await served.svc.store.get_job(job_id)
    assert job is not None
    return job


async def start(served: Served, job_id: str) -> None:
    job = await job_of(served, job_id)
    assert (await served.svc.store.start(job, {"interaction_id": "i1"}, poll_at=9e9)).ok


async def pause(served: Served, job_id: str) -> None:
    job = await job_of(served, job_id)
    assert (await served.svc.store.pause(job, {}, event_for(job), poll_at=9e9)).ok


async def resume(served: Served, job_id: str) -> None:
    job = await job_of(served, job_id)
    step = outcomes.submit_step(job.id, n=1)
    assert (await served.svc.store.resume(job, JobStatus.requires_action, {}, step)).ok


async def finish(served: Served, job_id: str, expect: JobStatus = JobStatus.running) -> None:
    job = await job_of(served, job_id)
    step = outcomes.batch_done_step(job.batch_id) if job.batch_id else None
    out = await served.svc.store.finish(
        job, JobStatus.completed, expect=expect, changes={}, event=event_for(job), batch_step=step
    )
    assert out.ok


async def next_event(events: AsyncIterator[ServerSentEvent]) -> ServerSentEvent:
    """The next event with data (httpx-sse also reports each heartbeat comment,
    as an event without data)."""
    async for ev in events:
        if ev.data:
            return ev
    raise AssertionError("the stream ended")


async def collect(
    served: Served, path: str, seen: asyncio.Queue[ServerSentEvent], last: str | None = None
) -> None:
    """Every event of the stream at ``path`` into ``seen``, until it ends."""
    headers = {"Last-Event-ID": last} if last else {}
    async with aconnect_sse(served.client, "GET", path, headers=headers) as source:
        assert source.response.status_code == 200
        async for ev in source.aiter_sse():
            if ev.data:  # not a heartbeat comment
                await seen.put(ev)


async def test_a_job_watcher_sees_every_change_in_order(served: Served) -> None:
    job_id = (await served.client.post("/v1/jobs", json=BODY)).json()["id"]
    seen: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
    watcher = asyncio.create_task(collect(served, f"/v1/jobs/{job_id}/events", seen))
    first = await seen.get()
    assert first.event == "job" and first.json()["status"] == "queued"
    await start(served, job_id)
    await pause(served, job_id)
    await resume(served, job_id)
    await finish(served, job_id)
    await watcher  # the stream ends after the final status
    events = [first] + [seen.get_nowait() for _ in range(seen.qsize())]
    statuses = [(e.event, e.json()["status"]) for e in events]
    assert statuses == [
        ("job", "queued"),
        ("status", "running"),
        ("status", "requires_action"),
        ("status", "running"),
        ("status", "completed"),
        ("job", "completed"),
    ]
    assert [e.json()["previous"] for e in events[1:5]] == [
        "queued",
        "running",
        "requires_action",
        "running",
    ]
    ids = [tuple(int(x) for x in e.id.split("-")) for e in events[1:5]]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert events[-1].id == events[-2].id  # the last event carries the last change's id


async def test_a_job_watcher_resumes_after_a_disconnect(served: Served) -> None:
    job_id = (await served.client.post("/v1/jobs", json=BODY)).json()["id"]
    path = f"/v1/jobs/{job_id}/events"
    last = ""
    async with aconnect_sse(served.client, "GET", path) as source:
        events = source.aiter_sse()
        assert (await next_event(events)).event == "job"
        await start(served, job_id)
        ev = await next_event(events)
        assert (ev.event, ev.json()["status"]) == ("status", "running")
        last = ev.id
    # disconnected: two changes happen meanwhile
    await pause(served, job_id)
    await finish(served, job_id, expect=JobStatus.requires_action)
    seen: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
    await collect(served, path, seen, last=last)
    got = [seen.get_nowait() for _ in range(seen.qsize())]
    assert [(e.event, e.json()["status"]) for e in got] == [
        ("status", "requires_action"),
        ("status", "completed"),
        ("job", "completed"),
    ]
    # resuming after the last change: just the final job, and the end
    seen = asyncio.Queue()
    await collect(served, path, seen, last=got[1].id)
    assert [(e.event, e.json()["status"]) for e in [seen.get_nowait()]] == [("job", "completed")]
    assert seen.empty()


async def new_batch(served: Served, n: int) -> tuple[str, list[str]]:
    jobs = [{"custom_id": f"c{i}", **BODY} for i in range(n)]
    r = await served.client.post("/v1/batches", json={"jobs": jobs})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    page = (await served.client.get("/v1/jobs", params={"batch_id": batch_id})).json()
    return batch_id, [j["id"] for j in page["data"]]


async def test_a_batch_watcher_sees_its_counts_and_status_and_resumes(served: Served) -> None:
    batch_id, job_ids = await new_batch(served, 3)
    path = f"/v1/batches/{batch_id}/events"
    async with aconnect_sse(served.client, "GET", path) as source:
        events = source.aiter_sse()
        first = await next_event(events)
        assert first.event == "batch" and first.json()["status"] == "in_progress"
        assert first.json()["counts"]["queued"] == 3
        await start(served, job_ids[0])
        ev = await next_event(events)
        assert ev.event == "counts" and ev.json()["counts"]["running"] == 1
        last = ev.id
    for jid in job_ids:
        if jid != job_ids[0]:
            await start(served, jid)
        await finish(served, jid)
    await batches.batch_done({"svc": served.svc}, batch_id)
    seen: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
    await collect(served, path, seen, last=last)
    got = [seen.get_nowait() for _ in range(seen.qsize())]
    assert [(e.event, e.json().get("status")) for e in got] == [
        ("status", "completed"),
        ("batch", "completed"),
    ]
    assert got[0].json()["previous"] == "in_progress"
    assert got[-1].json()["done"] == 3 and got[-1].id == got[0].id


async def test_a_batch_watcher_follows_a_batch_live(served: Served) -> None:
    batch_id, job_ids = await new_batch(served, 2)
    seen: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
    watcher = asyncio.create_task(collect(served, f"/v1/batches/{batch_id}/events", seen))
    assert (await seen.get()).event == "batch"
    for jid in job_ids:
        await finish(served, jid, expect=JobStatus.queued)
    await batches.batch_done({"svc": served.svc}, batch_id)
    await watcher
    got = [seen.get_nowait() for _ in range(seen.qsize())]
    done = [e.json()["done"] for e in got if e.event == "counts"]
    assert done == sorted(done) and all(0 < d <= 2 for d in done)
    assert [(e.event, e.json()["status"]) for e in got if e.event != "counts"] == [
        ("status", "completed"),
        ("batch", "completed"),
    ]


async def test_wait_answers_when_the_status_changes(served: Served) -> None:
    job_id = (await served.client.post("/v1/jobs", json=BODY)).json()["id"]
    get = asyncio.create_task(served.client.get(f"/v1/jobs/{job_id}", params={"wait": 50}))
    await served.waiting()
    await start(served, job_id)
    r = await get
    assert r.status_code == 200 and r.json()["status"] == "running"
    await finish(served, job_id)
    # final: answered at once, whatever the wait
    r = await served.client.get(f"/v1/jobs/{job_id}", params={"wait": 60})
    assert r.json()["status"] == "completed"
    r = await served.client.get(f"/v1/jobs/{job_id}", params={"wait": 0})
    assert r.json()["status"] == "completed"


async def test_batch_wait_answers_when_the_batch_ends(served: Served) -> None:
    batch_id, job_ids = await new_batch(served, 1)
    get = asyncio.create_task(served.client.get(f"/v1/batches/{batch_id}", params={"wait": 50}))
    await served.waiting()
    await finish(served, job_ids[0], expect=JobStatus.queued)
    await batches.batch_done({"svc": served.svc}, batch_id)
    r = await get
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert r.json()["done"] == 1


@pytest.mark.parametrize("wait", ["61", "-1", "soon"])
async def test_a_bad_wait_is_422(served: Served, wait: str) -> None:
    job_id = (await served.client.post("/v1/jobs", json=BODY)).json()["id"]
    for path in (f"/v1/jobs/{job_id}", "/v1/batches/bat_x"):
        r = await served.client.get(path, params={"wait": wait})
        assert r.status_code == 422, r.text
        assert "error" in r.json()


async def test_unknown_or_foreign_objects_are_404(settings: Settings) -> None:
    keys = {"t1": "key-one-0123456789", "t2": "key-two-0123456789"}
    digests = {t: hash_api_key(k) for t, k in keys.items()}
    s = Served(settings.model_copy(update={"api_keys": digests}))
    s.server.start()
    try:
        one = {"Authorization": f"Bearer {keys['t1']}"}
        two = {"Authorization": f"Bearer {keys['t2']}"}
        job_id = (await s.client.post("/v1/jobs", json=BODY, headers=one)).json()["id"]
        for path in (f"/v1/jobs/{job_id}/events", "/v1/jobs/job_nope/events"):
            r = await s.client.get(path, headers=two)
            assert r.status_code == 404 and r.json()["error"]["code"]
        r = await s.client.get(f"/v1/jobs/{job_id}", headers=two, params={"wait": 5})
        assert r.status_code == 404
        r = await s.client.get("/v1/batches/bat_nope/events", headers=two)
        assert r.status_code == 404
    finally:
        await s.client.aclose()
        await s.svc.close()
        s.server.stop()


async def test_a_lost_wake_up_is_made_good_by_the_heartbeat(served: Served) -> None:
    """A change whose publish never came (a crash, a subscription being made
    again) still reaches the watcher: it re-reads the stream on its heartbeat."""
    job_id = (await served.client.post("/v1/jobs", json=BODY)).json()["id"]
    k = served.svc.store.keys
    async with aconnect_sse(served.client, "GET", f"/v1/jobs/{job_id}/events") as source:
        events = source.aiter_sse()
        assert (await next_event(events)).event == "job"
        # the stream entry alone, as a transition writes it, without the PUBLISH
        await served.svc.redis.xadd(k.job_changes(job_id), {"status": "running", "from": "queued"})
        ev = await next_event(events)
        assert (ev.event, ev.json()["status"], ev.json()["previous"]) == (
            "status",
            "running",
            "queued",
        )


async def test_a_watcher_that_disconnects_leaves_nothing_behind(served: Served) -> None:
    job_id = (await served.client.post("/v1/jobs", json=BODY)).json()["id"]
    async with aconnect_sse(served.client, "GET", f"/v1/jobs/{job_id}/events") as source:
        assert (await next_event(source.aiter_sse())).event == "job"
        assert served.app.state.watch_hub.watchers == 1
    assert await asyncio.to_thread(served.released.wait, 30)
    assert served.app.state.watch_hub.watchers == 0


async def test_the_client_waits_with_wait_not_a_poll_loop(served: Served) -> None:
    from jobs.client import Client

    job_id = (await served.client.post("/v1/jobs", json=BODY)).json()["id"]
    with Client(served.server.url) as client:
        waiting = asyncio.create_task(asyncio.to_thread(client.wait, job_id, timeout=100))
        await served.waiting()  # its second GET waits on the change
        await start(served, job_id)
        await served.waiting()  # and its third
        await finish(served, job_id)
        assert (await waiting)["status"] == "completed"
