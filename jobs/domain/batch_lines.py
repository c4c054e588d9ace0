"""A batch's lines, read as a stream: split, checked and turned into job
records one chunk at a time, with bounded memory.

``Intake`` is fed the body in chunks (``feed``, meant to run in a worker thread:
``asyncio.to_thread``), or the items of a JSON body (``feed_items``). Each line
is parsed, its nesting depth bounded (``MAX_DEPTH``), checked (``BatchLine``,
then the SDK's types: ``checks.batch_line_problem``) and turned into its job
record (``lifecycle.new_job``, encoded as the create script takes it) at once.
Each call returns the frames it completed (``FRAME`` records, fewer when
they reach ``FRAME_BYTES``), which the caller writes while the next chunk is
checked (``jobs/domain/batch_ingest.py``, ``jobs/storage/batch_write.py``);
``finish`` returns the last one. What stays
in memory per line is small: its custom_id (for repeats), a webhook URL and a
chained interaction id when it has them, its model's metric label. The first
``MAX_REPORTED_ERRORS`` bad lines are kept; once a line is bad, no more
records are made (the batch will be refused), but every line is still checked
so that the 422 lists them all.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import Field, ValidationError, field_validator

from jobs.domain import checks, ids
from jobs.domain import lifecycle as outcomes
from jobs.domain.requests import CLEAN, JobCreate, WebhookSpec
from jobs.errors import BatchError
from jobs.observe import metrics, tracing
from jobs.settings import Settings
from jobs.storage.store import record_json

MAX_REPORTED_ERRORS = 100
MAX_DEPTH = 100  # nesting of arrays and objects in one line (protobuf's default limit)
FRAME = 250  # job records per frame: one create script call (batch_write.py) ...
FRAME_BYTES = 256 * 1024  # ... or fewer, when their records reach this size

_LONG_DIGITS = re.compile(rb"\d{19}")
NewJob = tuple[str, bytes]  # a job's id and its record (``store.record_json``)
Frame = list[NewJob]


class BatchLine(JobCreate):
    """A batch line: a job's body (its checks and bounds) with a custom_id it
    must have and a webhook that must bring its own secret."""

    custom_id: str = Field(min_length=1, max_length=256)

    @field_validator("webhook")
    @classmethod
    def _needs_secret(cls, v: WebhookSpec | None) -> WebhookSpec | None:
        if v is not None and v.secret is None:
            raise ValueError("a per-line webhook needs its own 'secret'")
        return v


def explain(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'line'}: {err['msg']}" for err in e.errors()
    )


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests arrays and objects deeper than ``limit``."""
    return checks.nesting_depth(value, limit) > limit


class TooDeep(ValueError):
    def __init__(self) -> None:
        super().__init__(f"arrays and objects nested deeper than {MAX_DEPTH} levels")


def parse_line(raw: bytes) -> tuple[Any, bool]:
    """One NDJSON line as JSON (or the exception that says what is wrong), and
    whether it was read as strict JSON: orjson's reading, which refuses NaN,
    Infinity and lone surrogates, so that its values need no check for them
    (``CLEAN``). What orjson refuses is read again by ``json``, which takes
    the rest of what it always took (integers of any size, say) and gives
    the error messages interq gives; so does a line with a run of 19 or more
    digits (orjson reads an integer past 64 bits as a float, ``json``
    exactly)."""
    try:
        if _LONG_DIGITS.search(raw):
            raise orjson.JSONDecodeError("long number", "", 0)
        value = orjson.loads(raw)
        clean = True
    except orjson.JSONDecodeError:
        clean = False
        try:
            value = json.loads(raw)
        except RecursionError:
            return TooDeep(), False
        except ValueError as e:
            return e, False
    # every bracket of the line counted (strings too): an upper bound of its depth
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(value):
        return TooDeep(), False
    return value, clean


class Intake:
    """One batch's lines as they arrive: checked, turned into job records,
    handed back in frames. ``finish()`` raises the batch's ``BatchError`` if
    it is refused."""

    def __init__(self, cfg: Settings, tenant: str, batch_id: str, now: float) -> None:
        self.cfg, self.tenant, self.batch_id, self.now = cfg, tenant, batch_id, now
        self.count = 0  # non-blank lines
        self.bad = 0
        self.errors: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}  # custom_id -> line
        self.urls: set[str] = set()  # per-line webhook URLs
        self.chains: list[tuple[int, Any]] = []  # (line, previous_interaction_id)
        self.models: Counter[str] = Counter()  # metric label -> jobs
        self._line = 0  # NDJSON: the number of the last line split off
        self._rest: list[bytes] = []  # NDJSON: the start of a line not ended yet
        self._frame: Frame = []
        self._frame_bytes = 0
        self._done: list[Frame] = []  # full frames not handed back yet
        self._ids: list[str] = []  # job ids minted ahead (ids.new_job_ids)
        self.traceparent = tracing.current_traceparent()  # the POST's, for every job

    # -- input ------------------------------------------------------------------
    def feed(self, chunk: bytes, final: bool = False) -> list[Frame]:
        """The next chunk of an NDJSON body (``final``: the body ended); the
        frames of records it completed."""
        head, sep, tail = chunk.rpartition(b"\n")
        if sep:
            whole = b"".join([*self._rest, head])
            self._rest = [tail] if tail else []
            for piece in whole.split(b"\n"):
                self._piece(piece)
        elif chunk:
            self._rest.append(chunk)
        if final and self._rest:
            rest, self._rest = b"".join(self._rest), []
            self._piece(rest)
        return self._take()

    def _piece(self, piece: bytes) -> None:
        """One ``\\n``-ended piece: a line, or several split by a lone ``\\r``
        (numbered as ``bytes.splitlines`` numbers them)."""
        for raw in piece.splitlines() if b"\r" in piece else (piece,):
            self._line += 1
            if raw.strip():
                self.item(self._line, *parse_line(raw))

    def feed_items(self, items: Iterable[Any], start: int = 1) -> list[Frame]:
        """Items of a JSON body's ``jobs`` list, the first numbered ``start``;
        the frames of records they completed."""
        for n, value in enumerate(items, start=start):
            self.item(n, TooDeep() if too_deep(value) else value)
        return self._take()

    # -- one line ---------------------------------------------------------------
    def item(self, n: int, item: Any, clean: bool = False) -> None:
        """Line ``n``, parsed (``clean``: strict JSON, see ``parse_line``)."""
        self.count += 1
        if self.count > self.cfg.max_batch_jobs:
            return  # refused for its size; lines are only counted from here
        problem = self._problem(n, item, clean)
        if problem is not None:
            self.bad += 1
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append({"line": n, "error": problem})

    def _problem(self, n: int, item: Any, clean: bool) -> str | None:
        if isinstance(item, TooDeep):
            return str(item)
        if isinstance(item, Exception):
            return f"not valid JSON: {item}"
        if not isinstance(item, dict):
            return "each line must be a JSON object"
        try:
            line = BatchLine.model_validate(item, context=CLEAN if clean else None)
        except ValidationError as e:
            return explain(e)
        problem = checks.batch_line_problem(
            line.interaction, line.metadata, forward_unknown=self.cfg.forward_unknown_fields
        )
        if problem:
            return problem
        if line.custom_id in self.seen:
            return f"custom_id {line.custom_id!r} repeats line {self.seen[line.custom_id]}"
        self.seen[line.custom_id] = n
        self._accept(n, line)
        return None

    def _accept(self, n: int, line: BatchLine) -> None:
        inter = line.interaction
        if line.webhook:
            self.urls.add(str(line.webhook.url))
        if inter.get("previous_interaction_id") is not None:
            self.chains.append((n, inter["previous_interaction_id"]))
        self.models[metrics.model_label(inter.get("model") or inter.get("agent"))] += 1
        if self.bad:
            return  # refused anyway: nothing more to store
        job = outcomes.new_job(
            self.cfg,
            self.tenant,
            inter,
            now=self.now,
            metadata=line.metadata,
            custom_id=line.custom_id,
            webhook_url=str(line.webhook.url) if line.webhook else "",
            webhook_secret=(line.webhook.secret or "") if line.webhook else "",
            timeout_s=line.timeout_s,
            batch_id=self.batch_id,
            traceparent=self.traceparent,
            job_id=self._next_id(),
        )
        # copied to a bytes object of its own size: orjson's output keeps the
        # 4 KB buffer it was written into, so the records waiting to be written
        # took ten times their size (95 MB at the peak of a 5 MB batch)
        record = bytes(memoryview(record_json(job)))
        self._frame.append((job.id, record))
        self._frame_bytes += len(record)
        if len(self._frame) >= FRAME or self._frame_bytes >= FRAME_BYTES:
            self._done.append(self._frame)
            self._frame, self._frame_bytes = [], 0

    def _next_id(self) -> str:
        if not self._ids:
            self._ids = ids.new_job_ids(FRAME)
            self._ids.reverse()
        return self._ids.pop()

    # -- output -----------------------------------------------------------------
    def _take(self) -> list[Frame]:
        done, self._done = self._done, []
        return done

    def finish(self) -> list[Frame]:
        """The input has ended: the batch's refusal (422), if any, else the
        last frame."""
        if self._frame:
            self._done.append(self._frame)
            self._frame, self._frame_bytes = [], 0
        last = self._take()
        if self.count == 0:
            raise BatchError("the batch has no jobs")
        if self.count > self.cfg.max_batch_jobs:
            limit = self.cfg.max_batch_jobs
            raise BatchError(f"a batch holds at most {limit} jobs; this one has {self.count}")
        if self.bad:
            raise BatchError(
                f"{self.bad} of {self.count} lines are invalid; nothing was queued", self.errors
            )
        return last
