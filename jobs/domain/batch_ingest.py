"""One batch taken in: its lines checked while the jobs of the lines before
them are written, then committed in one step, or nothing of it kept.

For a big NDJSON body three things go on at once: the body's next megabyte
arrives (the event loop), the one before is checked and turned into job
records (a worker thread: ``batch_lines.Intake``), and the frames of records
made before that are written (a task: ``batch_write.StagedBatch``; staged,
so invisible and never dispatched until the commit). The writer takes frames
from a queue of at most ``QUEUED_STEPS`` steps' frames (a step: one megabyte
of body, or ``JSON_SLICE`` items of a JSON body), ``WRITE_GROUP`` frames per
round trip: memory stays bounded when Redis is slower than the checks. A bad
line stops the records (the batch will be refused) but not the checks, so
that the 422 lists every bad line; what was written by then is purged
(``abandon``), as on any other error.

After the last line, while the last frames are written: what needs Redis or
DNS is checked (webhook addresses, chains to the tenant's own interactions);
then the commit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from jobs.delivery import url_safety
from jobs.domain import checks
from jobs.domain.batch_lines import MAX_REPORTED_ERRORS, Frame, Intake
from jobs.domain.records import Batch
from jobs.domain.requests import WebhookSpec
from jobs.errors import BatchError
from jobs.observe import metrics
from jobs.services import Services
from jobs.storage.batch_write import RENEW_S, StagedBatch, abandon

CHAIN_CHUNK = 500  # chained lines looked up per two round trips
QUEUED_STEPS = 2  # steps' frames made and not written yet, at most (then the checks wait)
WRITE_GROUP = 4  # frames per round trip to Redis


class Ingest:
    """One ``POST /v1/batches``: ``start`` once the batch's own fields are
    known, ``feed`` each step of the intake, ``finish`` (the batch id) or
    ``abort`` (nothing of it stays)."""

    def __init__(self, svc: Services, tenant: str) -> None:
        self.svc = svc
        self.intake = Intake(svc.settings, tenant, "bat_" + uuid.uuid4().hex, time.time())
        self._queue: asyncio.Queue[list[Frame] | None] = asyncio.Queue(QUEUED_STEPS)
        self._writer: asyncio.Task[None] | None = None
        self._staged: StagedBatch | None = None
        self._error: BaseException | None = None  # the writer's
        self._stopping = False

    @property
    def batch_id(self) -> str:
        return self.intake.batch_id

    def start(self, webhook: WebhookSpec | None, metadata: Any) -> None:
        """The batch's own fields: its jobs are written from now on."""
        batch = Batch(
            id=self.batch_id,
            tenant=self.intake.tenant,
            status="in_progress",
            total=0,  # the commit sets it
            done=0,
            created_at=self.intake.now,
            metadata=metadata,
            webhook_url=str(webhook.url) if webhook else "",
            webhook_secret=(webhook.secret or "") if webhook else "",
        )
        self._staged = StagedBatch(self.svc, batch)
        self._writer = asyncio.create_task(self._write(self._staged))

    async def feed(self, step: Callable[..., list[Frame]], *args: Any) -> None:
        """One step of the intake (``Intake.feed`` / ``feed_items``) run in a
        worker thread; the frames it made go to the writer."""
        await self.send(await asyncio.to_thread(step, *args))

    async def send(self, frames: list[Frame]) -> None:
        """One step's frames to the writer (waits while it is behind)."""
        if self._error is not None:
            raise self._error
        if frames:
            await self._queue.put(frames)

    async def _write(self, staged: StagedBatch) -> None:
        """The writer: frames in order until ``None``; after an error it only
        empties the queue (``send`` raises the error)."""
        while (frames := await self._next(staged)) is not None:
            if self._error is not None or self._stopping:
                continue
            try:
                if not staged.deadline:
                    await staged.stage()
                for i in range(0, len(frames), WRITE_GROUP):
                    if not self._stopping:
                        await staged.write(frames[i : i + WRITE_GROUP])
            except Exception as e:  # handed to the request (send, finish)
                self._error = e

    async def _next(self, staged: StagedBatch) -> list[Frame] | None:
        """The next frames; while none come (a client sending its lines
        slowly), the staging lease is renewed every ``RENEW_S``, so that a
        batch is only swept when its writer is gone."""
        while True:
            try:
                return await asyncio.wait_for(self._queue.get(), RENEW_S)
            except TimeoutError:
                if staged.deadline and self._error is None and not self._stopping:
                    try:
                        await staged.renew()
                    except Exception as e:  # handed to the request (send, finish)
                        self._error = e

    async def _drain(self) -> None:
        """Let the writer end after what it is writing now (never cut off
        mid-call: a frame that lands after the purge would outlive it)."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None

    async def finish(self) -> str:
        """The body has ended: refused (422) or written and committed."""
        await self.send(await asyncio.to_thread(self.intake.finish))
        staged = self._staged
        if staged is None:
            raise RuntimeError("finish() before start()")
        # while the last frames are written (and the lease kept: DNS can be slow)
        await check_intake(self.svc, self.intake, staged.batch.webhook_url)
        await self._drain()
        if self._error is not None:
            raise self._error
        if not staged.deadline:  # an accepted batch has a job, so it was staged
            raise RuntimeError("a batch without jobs")
        await staged.commit()
        for label, n in self.intake.models.items():
            metrics.JOBS_ACCEPTED.labels(model=label).inc(n)
        return self.batch_id

    async def abort(self) -> None:
        """Nothing of the batch stays: the writer stops, what it wrote is purged."""
        self._stopping = True
        await self._drain()
        if self._staged is not None and self._staged.deadline:
            await abandon(self.svc, self.batch_id)


async def check_intake(svc: Services, intake: Intake, webhook: str = "") -> None:
    """What the lines could not check alone: webhook addresses (each host
    resolved once) and chains to the tenant's own interactions, looked up
    ``CHAIN_CHUNK`` at a time (422 ``invalid_batch``)."""
    hosts: set[tuple[str, int]] = set()  # resolved once each, whatever the paths
    for url in sorted(intake.urls | ({webhook} if webhook else set())):
        try:
            host, port, _ = url_safety.check_syntax(url)
            if (host, port) not in hosts:
                await url_safety.resolve(url, svc.webhook_policy)
                hosts.add((host, port))
        except url_safety.UnsafeURL as e:
            raise BatchError(str(e)) from None
    bad = []
    for i in range(0, len(intake.chains), CHAIN_CHUNK):
        chunk = intake.chains[i : i + CHAIN_CHUNK]
        owners = await svc.store.interaction_tenants([prev for _, prev in chunk])
        for (n, prev), owner in zip(chunk, owners, strict=True):
            if owner != intake.tenant:
                problem = checks.not_own_interaction(prev)
                bad.append({"line": n, "error": f"interaction.previous_interaction_id: {problem}"})
    if bad:
        msg = f"{len(bad)} of {intake.count} lines are invalid; nothing was queued"
        raise BatchError(msg, lines=bad[:MAX_REPORTED_ERRORS])
