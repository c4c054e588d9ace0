"""Live output of a running interaction, from the upstream's own stream
(``GET /interactions/{id}?stream=true``, the reference's section 8), for the
watchers of a job's events. Polling stays the source of truth for a job's
status: this only relays partial text while someone watches.

``LiveStream.deltas`` yields the text and thought-summary pieces of one
interaction in order. A stream that drops (a reset, the API's cut at 600 s,
a malformed payload) is opened again with ``last_event_id``, the last event
it delivered, so the upstream goes on after it: nothing is lost or sent twice.
It ends at the interaction's end, or after ``MAX_DROPS`` drops in a row with
nothing new (the caller falls back to polling).

``Relays`` runs one upstream stream per watched interaction in this process,
whatever the number of watchers, and stops it when the last one leaves. A
watcher that joins late first gets the text so far (``Relay.text``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import aconnect_sse

from jobs.settings import Settings

log = logging.getLogger("interq.live")
MAX_DROPS = 5  # drops in a row with nothing new before giving up
RECONNECT_S = (0.2, 0.5, 1.0, 2.0, 5.0)
ENDS = frozenset({"completed", "failed", "cancelled", "incomplete", "requires_action"})
MAX_TEXT = 1 << 20  # characters of text a relay keeps for late watchers
QUEUE = 1024  # pieces a watcher may fall behind before it is dropped


@dataclass(frozen=True, slots=True)
class Delta:
    kind: str  # "text" or "thought_summary"
    text: str
    index: int  # the step it belongs to
    event_id: str  # the upstream event it came in


def deltas_of(payload: dict[str, Any], event_id: str) -> list[Delta]:
    if payload.get("event_type") != "step.delta":
        return []
    delta = payload.get("delta")
    raw_index = payload.get("index")
    index = raw_index if isinstance(raw_index, int) else -1
    if not isinstance(delta, dict):
        return []
    if delta.get("type") == "text" and isinstance(delta.get("text"), str):
        return [Delta("text", delta["text"], index, event_id)]
    content = delta.get("content")
    if delta.get("type") == "thought_summary" and isinstance(content, dict):
        text = content.get("text")
        return [Delta("thought_summary", text, index, event_id)] if isinstance(text, str) else []
    return []


def ended(payload: dict[str, Any]) -> bool:
    kind = payload.get("event_type")
    if kind in ("interaction.completed", "error"):
        return True
    return kind == "interaction.status_update" and payload.get("status") in ENDS


class LiveStream:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        headers = {"Accept": "text/event-stream"}
        if settings.gemini_api_key is not None:
            headers["x-goog-api-key"] = settings.gemini_api_key.get_secret_value()
        self.base = f"{settings.upstream_url}/{settings.upstream_api_version}/interactions"
        timeout = httpx.Timeout(settings.upstream_timeout_s, read=None)  # a stream idles
        self.http = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def deltas(self, interaction_id: str, last_event_id: str = "") -> AsyncIterator[Delta]:
        url = f"{self.base}/{quote(interaction_id, safe='')}"
        drops = 0
        while True:
            before = last_event_id
            async for item in self._one_stream(url, last_event_id):
                if isinstance(item, Delta):
                    yield item
                elif item is None:
                    return  # the interaction ended, or [DONE]
                else:
                    last_event_id = item
            drops = 0 if last_event_id != before else drops + 1
            if drops >= MAX_DROPS:
                log.info("interaction %s: its stream kept dropping; polling only", interaction_id)
                return
            await asyncio.sleep(RECONNECT_S[min(drops, len(RECONNECT_S) - 1)])

    async def _one_stream(self, url: str, after: str) -> AsyncIterator[Delta | str | None]:
        """One connection: each payload's deltas then its event id; None at
        the end of the interaction. Returns quietly when the stream drops."""
        params = {"stream": "true"} | ({"last_event_id": after} if after else {})
        try:
            async with aconnect_sse(self.http, "GET", url, params=params) as source:
                if source.response.status_code != 200:
                    return
                async for sse in source.aiter_sse():
                    if sse.data.strip() == "[DONE]":
                        yield None
                        return
                    payload = json.loads(sse.data)
                    event_id = str(payload.get("event_id") or sse.id or "")
                    for d in deltas_of(payload, event_id):
                        yield d
                    if event_id:
                        yield event_id
                    if ended(payload):
                        yield None
                        return
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            log.debug("stream dropped: %s", type(e).__name__)


@dataclass
class Relay:
    task: asyncio.Task[None] | None = None
    queues: set[asyncio.Queue[Delta | None]] = field(default_factory=set)
    text: list[Delta] = field(default_factory=list)
    size: int = 0
    done: bool = False


class Relays:
    """One upstream stream per watched interaction in this process."""

    def __init__(self, stream: LiveStream) -> None:
        self.stream = stream
        self.active: dict[str, Relay] = {}

    @contextlib.asynccontextmanager
    async def watch(
        self, interaction_id: str
    ) -> AsyncIterator[tuple[list[Delta], asyncio.Queue[Delta | None]]]:
        """(the pieces so far, a queue of the next ones; None: no more)."""
        relay = self.active.get(interaction_id)
        if relay is None:
            relay = self.active[interaction_id] = Relay()
            relay.task = asyncio.create_task(self._run(interaction_id, relay))
        queue: asyncio.Queue[Delta | None] = asyncio.Queue(QUEUE)
        if relay.done:
            queue.put_nowait(None)
        relay.queues.add(queue)
        try:
            yield list(relay.text), queue
        finally:
            relay.queues.discard(queue)
            if not relay.queues and self.active.get(interaction_id) is relay:
                del self.active[interaction_id]
                if relay.task is not None:
                    relay.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await relay.task

    async def _run(self, interaction_id: str, relay: Relay) -> None:
        try:
            async for d in self.stream.deltas(interaction_id):
                if relay.size < MAX_TEXT:
                    relay.text.append(d)
                    relay.size += len(d.text)
                for q in list(relay.queues):
                    try:
                        q.put_nowait(d)
                    except asyncio.QueueFull:  # a watcher that does not read: no more
                        relay.queues.discard(q)
                        _end(q)
        finally:
            relay.done = True
            for q in list(relay.queues):
                _end(q)

    async def aclose(self) -> None:
        for relay in list(self.active.values()):
            if relay.task is not None:
                relay.task.cancel()
        self.active.clear()
        await self.stream.aclose()


def _end(q: asyncio.Queue[Delta | None]) -> None:
    """Tell a watcher there is no more (dropping what it did not read if full)."""
    while q.full():
        q.get_nowait()
    q.put_nowait(None)
