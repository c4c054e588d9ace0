"""Group commit for one Lua script: the calls that arrive while the previous
round trip is in flight go to Redis together, in one pipeline.

``POST /v1/jobs`` makes one script call per job (``create_job.lua``). Under
concurrency, redis-py's own work per command (a connection checked out and
checked for unread data, a write, a read, a parse, the connection given back)
and the system calls on both sides cost more than the script. So the calls
that arrive while one batch is in flight wait for it (at most one round trip)
and are sent together as the next batch: one write and one read for all of
them. A lone call goes at once (one event loop turn later).

Each call is still its own ``EVALSHA``, atomic on its own, answered on its
own: a script error (``OOM``, ``READONLY``) is raised to that call only, a lost
connection to every call of its batch (the client's retries apply to the
pipeline as they did to the single command). The pipeline is not a
transaction: the calls of one batch do not depend on each other.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

MAX_BATCH = 256  # calls per pipeline; the rest wait for the next one

Call = tuple[list[Any], list[Any], "asyncio.Future[Any]"]


class Coalescer:
    """``await c.call(keys, args)``: the script's answer, as ``script(keys=,
    args=)`` would return it, sent with whatever other calls are waiting."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self.redis = redis
        self.script = script
        self._pending: list[Call] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): nothing carries over
            self._loop, self._pending, self._task = loop, [], None
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        """Send what is waiting, batch after batch, until nothing is."""
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                await self._send(batch)
            except Exception as e:  # the whole batch failed (Redis gone past the retries)
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
            except BaseException:  # cancelled (the loop shuts down): so are its callers
                for _, _, fut in [*batch, *self._pending]:
                    fut.cancel()
                raise

    async def _send(self, batch: list[Call]) -> None:
        results = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted or flushed
            await self.script.registered_client.script_load(self.script.script)
            again = [c for c, r in zip(batch, results, strict=True) if isinstance(r, NoScriptError)]
            retried = iter(await self._pipeline(again))
            results = [next(retried) if isinstance(r, NoScriptError) else r for r in results]
        for (_, _, fut), r in zip(batch, results, strict=True):
            if fut.done():  # its caller went away (cancelled): the call ran anyway
                continue
            if isinstance(r, Exception):
                fut.set_exception(r)
            else:
                fut.set_result(r)

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        sha = self.script.sha
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
