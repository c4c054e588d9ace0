"""A clock advanced by hand, a scripted upstream and the helpers that drive one
engine turn, for the clocked step tests (``tests/test_clocked_steps.py``).

The engines, ``poll_job`` and the submit step read their time from a
``jobs.work.clock.Clock``; with a ``FakeClock`` a test decides when "now" is,
so a 30 s retry delay or a deadline an hour away is checked without waiting.
Redis stays real: the claims, due times and transitions are the Lua scripts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from jobs.domain.lifecycle import new_job
from jobs.domain.records import Job
from jobs.services import Services
from jobs.settings import Settings
from jobs.work.dispatch import lane_of
from jobs.work.engine import DueEngine


@dataclass
class FakeClock:
    """Starts at the real now; moves only when ``advance`` is called."""

    wall: float = field(default_factory=time.time)
    mono: float = 1_000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def ms(self, later_s: float = 0.0) -> int:
        """A due time as the engines write it: epoch ms, ``later_s`` from now."""
        return int((self.wall + later_s) * 1000)


Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


@dataclass
class Upstream:
    """An ``httpx.MockTransport`` upstream: per operation (create, get, cancel)
    a list of answers given in turn, the last one repeated; every request is
    logged by operation."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        op = "get" if request.method == "GET" else "create"
        if request.url.path.endswith("/cancel"):
            op = "cancel"
        self.ops.append(op)
        queue = self.answers.get(op)
        if not queue:
            return httpx.Response(500, json={"error": {"message": f"no answer for {op}"}})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return answer(request) if callable(answer) else answer


def interaction(job_id: str, status: str, **extra: Any) -> httpx.Response:
    """A GET answer for the job's interaction ``int_1``, with its label."""
    body = {"id": "int_1", "status": status, "labels": {"interq_job": job_id}, **extra}
    return httpx.Response(200, json=body)


def error(code: int, retry_delay: str | None = None) -> httpx.Response:
    """A Google-shaped error answer; ``retry_delay`` only in its body."""
    err: dict[str, Any] = {"code": code, "message": f"error {code}"}
    if retry_delay is not None:
        err["details"] = [{"retryDelay": retry_delay}]
    return httpx.Response(code, json={"error": err})


async def queued_job(
    svc: Services, clock: FakeClock, *, timeout_s: float = 3600.0, webhook: str = ""
) -> Job:
    """A new job as the API writes it, created at the fake now."""
    job = new_job(
        svc.settings,
        "t1",
        {"model": "sim-model", "input": "hi"},
        now=clock.time(),
        timeout_s=timeout_s,
        webhook_url=webhook,
        webhook_secret="whsec_" + "x" * 32 if webhook else "",
    )
    ok, _ = await svc.store.create_job(job, lane=lane_of("t1", None))
    assert ok
    return await reread(svc, job.id)


async def running_job(svc: Services, clock: FakeClock, **kw: Any) -> Job:
    """A job whose interaction ``int_1`` was created: running, due now."""
    job = await queued_job(svc, clock, **kw)
    out = await svc.store.start(
        job,
        {"interaction_id": "int_1", "interaction_ids": ["int_1"], "submitted_at": clock.time()},
        poll_at=clock.time(),
    )
    assert out.ok
    return await reread(svc, job.id)


async def reread(svc: Services, job_id: str) -> Job:
    job = await svc.store.get_job(job_id)
    assert job is not None
    return job


async def due_ms(svc: Services, index: str, member: str) -> int | None:
    score = await svc.redis.zscore(index, member)
    return None if score is None else int(score)


async def turn(engine: DueEngine) -> None:
    """One engine turn by hand: claim and start what is due on the engine's
    clock, let every task end, write the results back."""
    await engine.step()
    await asyncio.gather(*engine.active.values())
    await engine.flush()


@asynccontextmanager
async def clocked_services(
    redis_url: str, results_dir: Path, upstream: Upstream, **settings: Any
) -> AsyncIterator[Services]:
    """Services on this Redis with ``upstream`` as the Gemini API (no key, no
    auth, results under ``results_dir``) and ``settings`` on top."""
    cfg = Settings(
        redis_url=redis_url,
        upstream_url="http://up",
        gemini_api_key=None,
        results_url=f"file://{results_dir / 'results'}",
        api_keys={},
        **settings,
    )
    s = Services.open(cfg, upstream_transport=upstream.transport())
    try:
        yield s
    finally:
        await s.close()
