"""A batch's lines, read as a stream: split, checked and turned into job
records one chunk at a time, with bounded memory.

``Intake`` is fed the body in chunks (``feed``, meant to run in a worker thread:
``asyncio.to_thread``), or the items of a JSON body (``feed_items``). Each line
is parsed, its nesting depth bounded (``MAX_DEPTH``), checked (``BatchLine``,
then the SDK's types: ``checks.batch_line_problem``) and turned into its job
record (``lifecycle.new_job``) at once; the records go to an anonymous
temporary file in frames of ``FRAME`` jobs, which ``frames()`` reads back for
the chunked write (``jobs/storage/batch_write.py``). What stays in memory per
line is small: its custom_id (for repeats), a webhook URL and a chained
interaction id when it has them, its model's metric label. The first
``MAX_REPORTED_ERRORS`` bad lines are kept; once a line is bad, no more
records are spooled (the batch will be refused), but every line is still
checked so that the 422 lists them all.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Any

from pydantic import Field, ValidationError, field_validator

from jobs.domain import checks
from jobs.domain import lifecycle as outcomes
from jobs.domain.records import Job
from jobs.domain.requests import JobCreate, WebhookSpec
from jobs.errors import BatchError
from jobs.observe import metrics, tracing
from jobs.settings import Settings

MAX_REPORTED_ERRORS = 100
MAX_DEPTH = 100  # nesting of arrays and objects in one line (protobuf's default limit)
FRAME = 250  # job records per spooled frame, and per write pipeline


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


def parse_line(raw: bytes) -> Any:
    """One NDJSON line as JSON, or the exception that says what is wrong."""
    try:
        value = json.loads(raw)
    except RecursionError:
        return TooDeep()
    except ValueError as e:
        return e
    # every bracket of the line counted (strings too): an upper bound of its depth
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(value):
        return TooDeep()
    return value


class Intake:
    """One batch's lines as they arrive: checked, turned into job records,
    spooled. ``finish()`` raises the batch's ``BatchError`` if it is refused."""

    def __init__(self, cfg: Settings, tenant: str, batch_id: str, now: float) -> None:
        self.cfg, self.tenant, self.batch_id, self.now = cfg, tenant, batch_id, now
        self.count = 0  # non-blank lines
        self.jobs = 0  # records spooled
        self.bad = 0
        self.errors: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}  # custom_id -> line
        self.urls: set[str] = set()  # per-line webhook URLs
        self.chains: list[tuple[int, Any]] = []  # (line, previous_interaction_id)
        self.models: Counter[str] = Counter()  # metric label -> jobs
        self._line = 0  # NDJSON: the number of the last line split off
        self._rest: list[bytes] = []  # NDJSON: the start of a line not ended yet
        self._frame: list[Job] = []
        self._spool: IO[bytes] = tempfile.TemporaryFile()  # closed by close()
        self.traceparent = tracing.current_traceparent()  # the POST's, for every job

    # -- input ------------------------------------------------------------------
    def feed(self, chunk: bytes, final: bool = False) -> None:
        """The next chunk of an NDJSON body (``final``: the body ended)."""
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

    def _piece(self, piece: bytes) -> None:
        """One ``\\n``-ended piece: a line, or several split by a lone ``\\r``
        (numbered as ``bytes.splitlines`` numbers them)."""
        for raw in piece.splitlines() if b"\r" in piece else (piece,):
            self._line += 1
            if raw.strip():
                self.item(self._line, parse_line(raw))

    def feed_items(self, items: Iterable[Any]) -> None:
        """The items of a JSON body's ``jobs`` list, lines numbered from 1."""
        for n, value in enumerate(items, start=1):
            self.item(n, TooDeep() if too_deep(value) else value)

    # -- one line ---------------------------------------------------------------
    def item(self, n: int, item: Any) -> None:
        self.count += 1
        if self.count > self.cfg.max_batch_jobs:
            return  # refused for its size; lines are only counted from here
        problem = self._problem(n, item)
        if problem is not None:
            self.bad += 1
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append({"line": n, "error": problem})

    def _problem(self, n: int, item: Any) -> str | None:
        if isinstance(item, TooDeep):
            return str(item)
        if isinstance(item, Exception):
            return f"not valid JSON: {item}"
        if not isinstance(item, dict):
            return "each line must be a JSON object"
        try:
            line = BatchLine.model_validate(item)
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
        )
        self._frame.append(job)
        if len(self._frame) >= FRAME:
            self._flush()

    # -- output -----------------------------------------------------------------
    def _flush(self) -> None:
        if self._frame:
            pickle.dump(self._frame, self._spool, protocol=pickle.HIGHEST_PROTOCOL)
            self.jobs += len(self._frame)
            self._frame = []

    def finish(self) -> None:
        """The input has ended: the batch's refusal (422), if any."""
        self._flush()
        if self.count == 0:
            raise BatchError("the batch has no jobs")
        if self.count > self.cfg.max_batch_jobs:
            limit = self.cfg.max_batch_jobs
            raise BatchError(f"a batch holds at most {limit} jobs; this one has {self.count}")
        if self.bad:
            raise BatchError(
                f"{self.bad} of {self.count} lines are invalid; nothing was queued", self.errors
            )
        self._spool.flush()

    def frames(self) -> Iterator[list[Job]]:
        """The spooled job records, ``FRAME`` at a time, in input order."""
        self._spool.seek(0)
        while True:
            try:
                # our own anonymous temporary file, written by _flush above
                frame: list[Job] = pickle.load(self._spool)  # noqa: S301
            except EOFError:
                return
            yield frame

    def close(self) -> None:
        self._spool.close()
