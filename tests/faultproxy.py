"""A TCP proxy in front of a real redis-server that, when switched, answers
commands with an error reply the way a troubled Redis would.

It forwards bytes unchanged until ``fault(kind)``; from then on it parses each
RESP command (arrays of bulk strings, what redis-py sends) and answers the ones
the fault applies to with one error reply each, in order with the replies of the
commands it still forwards (pipelines included). A command inside MULTI that it
refuses makes the EXEC answer ``-EXECABORT`` (the server gets DISCARD), as Redis
does. Which commands a fault hits, by default as the real server would:

- ``readonly`` (a replica after failover): commands flagged ``write`` plus scripts;
- ``oom`` (maxmemory with noeviction): commands flagged ``denyoom`` plus scripts;
- ``loading`` (restart): everything but the connection set-up and INFO.

``only="all"`` hits every command but the connection set-up (AUTH, HELLO,
CLIENT, SELECT, QUIT, RESET): a read then fails too. The flags come from the
server's own ``COMMAND`` reply. Runs in its own thread and event loop, so that
blocking test code and worker subprocesses can use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

REPLIES = {
    "readonly": b"-READONLY You can't write against a read only replica.\r\n",
    "oom": b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
    "loading": b"-LOADING Redis is loading the dataset in memory\r\n",
}
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
DISCARD = b"*1\r\n$7\r\nDISCARD\r\n"
HANDSHAKE = frozenset({"AUTH", "HELLO", "CLIENT", "SELECT", "QUIT", "RESET"})
SCRIPTS = frozenset({"EVAL", "EVALSHA", "FCALL"})


@dataclass(frozen=True)
class Fault:
    reply: bytes
    hits: Callable[[str], bool]  # upper-case command name -> refuse it?


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.fault_: Fault | None = None
        self.refused = 0  # commands answered with an error so far
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._flags = self._command_flags()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command_flags(self) -> dict[str, set[str]]:
        r = redis.Redis(host=self.target[0], port=self.target[1])
        try:
            info = r.command()
        finally:
            r.close()
        return {
            name.upper(): {f.decode() if isinstance(f, bytes) else str(f) for f in c["flags"]}
            for name, c in info.items()
        }

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._clients):
                w.close()  # each connection's tasks then end by themselves
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:
                _, pending = await asyncio.wait(others, timeout=5)
                for t in pending:
                    t.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # ------------------------------------------------------------------ switching

    def fault(self, kind: str, only: str = "") -> None:
        """Start refusing: ``kind`` is readonly, oom or loading; ``only="all"``
        widens it to every command but the connection set-up."""
        if only == "all":
            self.fault_ = Fault(REPLIES[kind], lambda name: name not in HANDSHAKE)
            return
        flag = {"readonly": "write", "oom": "denyoom"}.get(kind)
        if flag is None:
            keep = HANDSHAKE | {"INFO"}
            self.fault_ = Fault(REPLIES[kind], lambda name: name not in keep)
        else:
            self.fault_ = Fault(
                REPLIES[kind],
                lambda name: name in SCRIPTS or flag in self._flags.get(name, set()),
            )

    def clear(self) -> None:
        self.fault_ = None

    def drop(self) -> None:
        """Close every client connection now (a dropped connection)."""
        for w in list(self._clients):
            self._loop.call_soon_threadsafe(w.close)

    # ------------------------------------------------------------------ proxying

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        self._clients.add(cwriter)
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        answer = asyncio.ensure_future(self._answer(sreader, cwriter, queue))
        try:
            await self._commands(creader, swriter, queue)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._clients.discard(cwriter)
            await queue.put(None)
            with contextlib.suppress(Exception):
                await answer
            for w in (swriter, cwriter):
                w.close()

    async def _commands(
        self,
        reader: asyncio.StreamReader,
        server: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[str, bytes] | None],
    ) -> None:
        """Read the client's commands; forward or refuse each, queueing what
        the client is owed in order: ("server", b"") a reply to relay,
        ("local", err) an error, ("swap", err) drop a reply and send err."""
        in_multi = poisoned = False
        while True:
            raw, name = await read_command(reader)
            fault = self.fault_
            if name == "MULTI":
                in_multi, poisoned = True, False
            elif name in ("EXEC", "DISCARD") and in_multi:
                in_multi = False
                if name == "EXEC" and poisoned:
                    server.write(DISCARD)
                    await queue.put(("swap", EXECABORT))
                    continue
            elif fault is not None and fault.hits(name):
                self.refused += 1
                poisoned = poisoned or in_multi
                await queue.put(("local", fault.reply))
                continue
            server.write(raw)
            await queue.put(("server", b""))

    async def _answer(
        self,
        server: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[str, bytes] | None],
    ) -> None:
        try:
            while (item := await queue.get()) is not None:
                kind, data = item
                if kind == "local":
                    client.write(data)
                else:
                    reply = await read_reply(server)
                    client.write(data if kind == "swap" else reply)
                if queue.empty():
                    await client.drain()
        finally:
            client.close()  # the server went away: so does the client's connection


async def read_command(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """One command as sent (RESP array of bulk strings) and its upper-case name."""
    head = await reader.readuntil(b"\r\n")
    if head[:1] != b"*":
        raise ValueError(f"not a RESP array: {head[:20]!r}")
    parts = [head]
    name = ""
    for i in range(int(head[1:-2])):
        size_line = await reader.readuntil(b"\r\n")
        data = await reader.readexactly(int(size_line[1:-2]) + 2)
        parts += [size_line, data]
        if i == 0:
            name = data[:-2].decode(errors="replace").upper()
    return b"".join(parts), name


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole RESP2/RESP3 reply, as received."""
    line = await reader.readuntil(b"\r\n")
    kind = line[:1]
    if kind in b"+-:_,#(":
        return line
    n = int(line[1:-2])
    if kind in b"$!=":
        return line if n < 0 else line + await reader.readexactly(n + 2)
    if kind in b"*~>%|":
        items = n * 2 if kind in b"%|" else n
        parts = [line]
        for _ in range(max(items, 0)):
            parts.append(await read_reply(reader))
        return b"".join(parts)
    raise ValueError(f"unknown RESP type {line[:20]!r}")
