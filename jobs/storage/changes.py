"""Reading the change streams that the transitions write, for watchers.

Every transition that changes a job's status (``start``, ``pause``, ``resume``,
``finish``) or a batch's (``finish_batch``; a batch's pause and its lifting,
below) adds an entry ``status, <new>, from, <old>`` to the object's changes
stream (``Keys.job_changes`` / ``Keys.batch_changes``, capped at ~200
entries) and publishes ``job:<id>`` / ``batch:<id>`` on the one changes
channel (``Keys.changes_channel``), in the same atomic step as the change.
The stream is the record of what happened, and its entry ids are the SSE
event ids (so ``Last-Event-ID`` resumes from it); the publish is only a wake-up
and may be lost (a watcher also re-reads on its heartbeat).

A job's creation (``queued``) writes no entry: a watcher starts from the
record's current state. A seam for later: other kinds of entries (a ``delta``
of partial output) can go into the same stream with a ``kind`` field; readers
here skip entries without ``status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from jobs.storage.keys import Keys

START = "0-0"  # before any entry
CAP = 200  # the streams' MAXLEN ~ (as in the Lua scripts)
READ_MAX = 500  # entries read per XRANGE


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class Change:
    """One stream entry: a change of status."""

    id: str  # the stream entry id, ``<ms>-<n>``
    status: str
    previous: str

    @property
    def at(self) -> float:
        """When it was written (the entry id's milliseconds), in seconds."""
        return int(self.id.split("-", 1)[0]) / 1000

    def data(self, object_id: str) -> dict[str, Any]:
        return {"id": object_id, "status": self.status, "previous": self.previous, "at": self.at}


def valid_id(raw: str | None) -> str | None:
    """A stream id as a client may send it back (``Last-Event-ID``), else None."""
    if not raw:
        return None
    ms, sep, n = raw.strip().partition("-")
    if not (ms.isdigit() and (not sep or n.isdigit())) or len(raw) > 40:
        return None
    return f"{int(ms)}-{int(n or 0)}"


def _changes(rows: list[Any]) -> list[Change]:
    out = []
    for entry_id, fields in rows:
        f = {_s(k): _s(v) for k, v in fields.items()}
        if "status" in f:
            out.append(Change(_s(entry_id), f["status"], f.get("from", "")))
    return out


async def after(redis: Redis, key: str, last: str) -> tuple[list[Change], bool]:
    """The changes after entry ``last``, oldest first, and whether some were
    lost (trimmed off a full stream: the caller should send a snapshot)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xrange(key, f"({last}", "+", count=READ_MAX)
        pipe.xlen(key)
        pipe.xrange(key, "-", "+", count=1)
        rows, length, first = await pipe.execute()
    gap = bool(first) and int(length) >= CAP and _older(last, _s(first[0][0]))
    return _changes(rows), gap


def _older(a: str, b: str) -> bool:
    """Entry id ``a`` comes before ``b``."""
    am, _, an = a.partition("-")
    bm, _, bn = b.partition("-")
    return (int(am), int(an or 0)) < (int(bm), int(bn or 0))


def latest_cmd(pipe: Pipeline, key: str) -> None:
    """Queue the read of a stream's last entry (see ``latest_of``)."""
    pipe.xrevrange(key, "+", "-", count=1)


def latest_of(reply: Any) -> str:
    """The last entry id from ``latest_cmd``'s reply (``START`` when empty)."""
    return _s(reply[0][0]) if reply else START


async def latest(redis: Redis, key: str) -> str:
    async with redis.pipeline(transaction=False) as pipe:
        latest_cmd(pipe, key)
        (reply,) = await pipe.execute()
    return latest_of(reply)


def note_batch_status(
    pipe: Pipeline, keys: Keys, batch_id: str, status: str, previous: str
) -> None:
    """Queue, in the caller's MULTI, a batch's change of shown status (a pause
    or its lifting, which are plain writes, not scripts): its stream entry and
    the wake-up."""
    stream = keys.batch_changes(batch_id)
    pipe.xadd(stream, {"status": status, "from": previous}, maxlen=CAP, approximate=True)
    pipe.publish(keys.changes_channel, f"batch:{batch_id}")
