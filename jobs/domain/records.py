"""The typed records at the store boundary: ``Job``, ``Event`` and ``Batch``.

Redis keeps every field of a hash as a string ("1"/"0" flags, "%.3f" times,
JSON text); here each field has its real type. One codec per field does both
directions: ``X.from_redis(fields)`` reads a hash, ``x.to_redis()`` writes a
whole record (a new one), and ``encode(X, changes)`` writes a partial update
(what a transition sets) with the same codecs, so a field is spelt one way
everywhere. Fields this code does not know are kept in ``extra`` and written
back unchanged.

They are dataclasses rather than pydantic models: they hold data that interq
wrote itself (callers' input is validated by the pydantic models of
``models.py`` before it gets here), the conversions are Redis encodings that
pydantic would need a custom validator for anyway, and the poll engine decodes
hundreds of records per round trip, where plain dataclasses cost least.

The create bodies (``request``, ``pending_create``, ``hop_body``) stay JSON
text: they are sent on, not looked into, and can be large, so only the step
that sends one decodes it (``Job.body``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, NamedTuple, TypedDict

from jobs.domain.statuses import JobStatus

Fields = dict[str, str]  # a Redis hash as stored


class Codec(NamedTuple):
    decode: Callable[[str], Any]  # from a stored string ('' reads as empty)
    encode: Callable[[Any], str]  # to a stored string (None writes '')


STR = Codec(lambda v: v, lambda x: "" if x is None else str(x))
INT = Codec(lambda v: int(v) if v else 0, str)
FLOAT = Codec(lambda v: float(v) if v else 0.0, lambda x: f"{x:.3f}")
OPT_INT = Codec(lambda v: int(v) if v else None, lambda x: "" if x is None else str(x))
OPT_FLOAT = Codec(lambda v: float(v) if v else None, lambda x: "" if x is None else f"{x:.3f}")
FLAG = Codec(lambda v: v == "1", lambda x: "1" if x else "0")
BY_TYPE = {
    "str": STR,
    "str | None": STR,
    "int": INT,
    "float": FLOAT,
    "float | None": OPT_FLOAT,
    "bool": FLAG,
    "JobStatus": Codec(JobStatus, lambda x: JobStatus(x).value),
}


def json_codec(empty: Any, none: str = "") -> dict[str, Codec]:
    """JSON text; '' (or absent) reads as ``empty``, None writes ``none``."""
    return {
        "codec": Codec(
            lambda v: json.loads(v) if v else copy.copy(empty),
            lambda x: none if x is None else json.dumps(x),
        )
    }


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _codecs(cls: type) -> dict[str, Codec]:
    found: dict[str, Codec] | None = cls.__dict__.get("_codec_cache")
    if found is None:
        found = {
            f.name: f.metadata.get("codec") or BY_TYPE[str(f.type)]
            for f in fields(cls)
            if f.name != "extra"
        }
        cls._codec_cache = found  # type: ignore[attr-defined]
    return found


def _plan(cls: type) -> list[tuple[str, Any, Callable[[Any], str]]]:
    """Per field of ``cls`` (not ``extra``): its name, its default (a default
    factory's value, made once: only compared with, never handed out) and its
    encoder; computed once per class, as ``whole`` runs once per record written."""
    found: list[tuple[str, Any, Callable[[Any], str]]] | None = cls.__dict__.get("_plan_cache")
    if found is None:
        codecs = _codecs(cls)
        found = [
            (f.name, f.default_factory() if callable(f.default_factory) else f.default,
             codecs[f.name].encode)
            for f in fields(cls)
            if f.name != "extra"
        ]  # fmt: skip
        cls._plan_cache = found  # type: ignore[attr-defined]
    return found


def decode(cls: type, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """The arguments of a ``cls`` record, from a hash as Redis returns it
    (str or bytes)."""
    codecs = _codecs(cls)
    known: dict[str, Any] = {}
    extra: Fields = {}
    for k, v in raw.items():
        name, value = _s(k), _s(v)
        codec = codecs.get(name)
        if codec is None:
            extra[name] = value
        else:
            known[name] = codec.decode(value)
    return {**known, "extra": extra}


def encode(cls: type, changes: Mapping[str, Any]) -> Fields:
    """The stored form of some fields of a ``cls`` record (a partial write).
    An unknown name is an error: a typo must not write a field nobody reads."""
    codecs = _codecs(cls)
    return {name: codecs[name].encode(value) for name, value in changes.items()}


def whole(record: Any, always: frozenset[str]) -> Fields:
    """Every field that is set (not None, not its default), the ``always``
    ones in any case, and the unknown ones: the stored form of a record."""
    out: Fields = {}
    for name, default, enc in _plan(type(record)):
        value = getattr(record, name)
        if name in always or (value is not None and value != default):
            out[name] = enc(value)
    out.update(record.extra)
    return out


# --------------------------------------------------------------------------- jobs


@dataclass(slots=True, kw_only=True)
class Job:
    """A job record. Times are epoch seconds; counters count in a row unless
    their name says otherwise (see ``steps.py`` and ``poller.py``)."""

    id: str
    status: JobStatus
    tenant: str = ""
    seq: int = 0
    created_at: float = 0.0
    updated_at: float | None = None
    deadline: float = 0.0
    request: str = ""  # the create body as accepted, JSON text
    model: str = ""  # the model or agent
    metadata: Any = field(default=None, metadata=json_codec(None, none="null"))
    custom_id: str = ""
    webhook_url: str = ""
    webhook_secret: str = ""
    batch_id: str = ""
    idem_key: str = ""  # the Redis key of its Idempotency-Key (deleted with the job)
    traceparent: str = ""  # W3C trace context of the request that made it (tracing.py)
    attempt: int = 1  # 1, then 2 after a rerun, ...
    # the earlier attempts (jobs/domain/rerun.py attempt_summary), oldest first
    attempts: list[dict[str, Any]] = field(default_factory=list, metadata=json_codec([]))
    # the upstream interaction
    submitted_at: float | None = None
    finished_at: float | None = None
    interaction_id: str = ""
    interaction_ids: list[str] = field(default_factory=list, metadata=json_codec([]))
    upstream_status: str = ""
    create_inflight: bool = False  # a create was sent and its answer not recorded yet
    possible_duplicate: bool = False
    submit_attempts: int = 0
    submit_faults: int = 0
    poll_errors: int = 0
    poll_faults: int = 0
    poll_count: int = 0  # polls of the current interaction
    last_poll_error: str = ""
    unknown_logged: str | None = None  # an unknown upstream status already logged
    relaunches: int = 0  # creates re-sent after an answer with another job's label
    cancel_requested: bool = False
    cancel_sent: bool = False
    cancel_attempts: int = 0
    pending_create: str = ""  # the next create to send (JSON text), '' when none
    hop_body: str = ""  # the last follow-up create sent (JSON text)
    pending_calls: list[dict[str, Any]] | None = field(default=None, metadata=json_codec(None))
    # the outcome
    # what the earlier interactions of this turn (requires_continuation hops)
    # left for answers.turn_text: their open text run, and their output_text
    # (None: the current interaction is the turn's first)
    output_prefix: str = ""
    output_carry: str | None = None
    output_text: str | None = None
    usage: dict[str, Any] | None = field(default=None, metadata=json_codec(None))  # all hops
    # each interaction's own usage, in the order of interaction_ids
    usage_by_interaction: list[dict[str, Any] | None] = field(
        default_factory=list, metadata=json_codec([])
    )
    error: dict[str, Any] | None = field(default=None, metadata=json_codec(None))
    # the estimated cost of ``usage`` in nano-USD (INTERQ_PRICES at the time of
    # use); None: no usage yet, or no price for its model (``jobs/domain/costs.py``)
    cost_nano_usd: int | None = field(default=None, metadata={"codec": OPT_INT})
    earlier_cost_nano_usd: int = 0  # the job's earlier attempts' (reruns)
    note: str = ""
    event_id: str = ""
    result_key: str = ""
    files: dict[str, str] = field(default_factory=dict, metadata=json_codec({}))
    extra: Fields = field(default_factory=dict)  # fields this version does not know

    ALWAYS = frozenset(
        {"id", "status", "tenant", "created_at", "deadline", "request", "model", "metadata",
         "custom_id", "webhook_url", "webhook_secret"}
    )  # fmt: skip

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any]) -> Job:
        return cls(**decode(cls, raw))

    def to_redis(self) -> Fields:
        return whole(self, self.ALWAYS)

    @property
    def ref(self) -> str:
        """What its events name as their owner."""
        return f"job:{self.id}"

    def body(self, text: str | None = None) -> dict[str, Any]:
        """A create body (``request`` unless another is given), decoded."""
        decoded: dict[str, Any] = json.loads(self.request if text is None else text)
        return decoded


class JobUpdate(TypedDict, total=False):
    """The fields a transition or a plain write may set (``encode(Job, ...)``):
    the ones that change after a job is created, typed as in ``Job``."""

    submitted_at: float
    finished_at: float
    interaction_id: str
    interaction_ids: list[str]
    upstream_status: str
    create_inflight: bool
    possible_duplicate: bool
    submit_attempts: int
    submit_faults: int
    poll_errors: int
    poll_faults: int
    poll_count: int
    last_poll_error: str
    unknown_logged: str | None
    relaunches: int
    cancel_requested: bool
    cancel_sent: bool
    cancel_attempts: int
    pending_create: str
    hop_body: str
    pending_calls: list[dict[str, Any]] | None
    output_prefix: str
    output_carry: str | None
    output_text: str | None
    usage: dict[str, Any] | None
    usage_by_interaction: list[dict[str, Any] | None]
    error: dict[str, Any] | None
    cost_nano_usd: int | None
    note: str
    event_id: str
    result_key: str
    files: dict[str, str]


def job_fields(changes: JobUpdate) -> Fields:
    return encode(Job, changes)


# --------------------------------------------------------------------------- events


class EventState(StrEnum):
    pending = "pending"  # in the delivery index
    no_endpoint = "no_endpoint"  # nowhere to send it
    delivered = "delivered"
    gone = "gone"  # the receiver answered 410
    dead = "dead"  # dead-lettered after the retry schedule


@dataclass(slots=True, kw_only=True)
class Event:
    """A webhook event: the outbox entry a transition creates, and its
    delivery state. ``body`` is the exact JSON text that is signed and sent."""

    id: str
    state: EventState = field(metadata={"codec": Codec(EventState, lambda x: EventState(x).value)})
    owner: str = ""  # "job:<id>" or "batch:<id>"
    job_id: str = ""  # the owner's id
    tenant: str = ""
    type: str = ""
    body: str = ""
    attempts: int = 0
    round_attempts: int = 0  # attempts since it was last (re)delivered
    created_at: float = 0.0
    last_attempt_at: float | None = None
    last_error: str = ""
    faults: int = 0
    redeliveries: int = 0
    traceparent: str = ""  # its owner's trace (sent on with each attempt)
    extra: Fields = field(default_factory=dict)

    ALWAYS = frozenset(
        {"id", "state", "owner", "job_id", "tenant", "type", "body", "attempts", "created_at"}
    )

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any]) -> Event:
        return cls(**decode(cls, raw))

    def to_redis(self) -> Fields:
        return whole(self, self.ALWAYS)

    @property
    def owner_ref(self) -> str:
        """Its owner; events of old versions name only ``job_id``."""
        return self.owner or f"job:{self.job_id}"


class EventUpdate(TypedDict, total=False):
    state: EventState
    attempts: int
    round_attempts: int
    last_attempt_at: float
    last_error: str
    faults: int
    redeliveries: int


def event_fields(changes: EventUpdate) -> Fields:
    return encode(Event, changes)


# --------------------------------------------------------------------------- batches


@dataclass(slots=True, kw_only=True)
class Batch:
    """A batch record; its counts by status are a hash of their own."""

    id: str
    tenant: str = ""
    status: str = "in_progress"  # then completed or cancelled
    total: int = 0
    done: int = 0  # its jobs that ended (the transition scripts count them)
    created_at: float = 0.0
    updated_at: float | None = None
    finished_at: float | None = None
    metadata: Any = field(default=None, metadata=json_codec(None, none="null"))
    webhook_url: str = ""
    webhook_secret: str = ""
    cancel_requested: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano_usd: int = 0  # running total of its ended jobs' costs (jobs/domain/costs.py)
    cost_final_nano_usd: int | None = field(default=None, metadata={"codec": OPT_INT})
    event_id: str = ""
    reruns: int = 0  # jobs run again (POST /v1/jobs/{id}/rerun, /v1/batches/{id}/rerun)
    extra: Fields = field(default_factory=dict)

    ALWAYS = frozenset(
        {"id", "tenant", "status", "total", "done", "created_at", "metadata", "webhook_url",
         "webhook_secret"}
    )  # fmt: skip

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any]) -> Batch:
        return cls(**decode(cls, raw))

    def to_redis(self) -> Fields:
        return whole(self, self.ALWAYS)

    @property
    def ref(self) -> str:
        return f"batch:{self.id}"


class BatchUpdate(TypedDict, total=False):
    status: str
    finished_at: float
    event_id: str
    input_tokens: int
    output_tokens: int


def batch_fields(changes: BatchUpdate) -> Fields:
    return encode(Batch, changes)
