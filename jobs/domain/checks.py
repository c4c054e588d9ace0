"""Create bodies checked at intake the way the real API would check them.

A body the Gemini API refuses would otherwise pass intake and fail later, once
per job (a 50,000-line batch, 50,000 failures). So every create body (the
``interaction`` of ``POST /v1/jobs`` and of each batch line) is validated here
with the google-genai SDK's own request models, ``CreateModelInteraction`` and
``CreateAgentInteraction`` (``google.genai._gaos.types.interactions``):

* a wrong type (``generation_config.temperature: "hot"``) is the SDK's own
  pydantic error, reported at its field path (the SDK's union member names are
  left out of the path);
* an unknown variant (a tool ``type`` the SDK does not know: it parses it as its
  ``Unknown*`` placeholder) is refused at its path;
* an unknown field name (``temprature``; the SDK's models keep extra fields,
  the real API answers 400 "Unknown name") is refused unless
  ``INTERQ_FORWARD_UNKNOWN_FIELDS`` lets fields newer than the SDK through.
  Free-form objects (a function ``result``, ``arguments``, a JSON schema) are
  models without declared fields or plain dicts in the SDK, and are not checked.

A body that passes is remembered by its skeleton (``jobs/domain/sdk_shapes.py``:
the body with the strings that cannot change the SDK's verdict blanked), so
the lines of a batch that differ only in free text are validated once.

JSON values that cannot be sent (a lone surrogate, NaN, Infinity) are found by
:func:`json_value_problems`, for ``metadata`` too, and values nested deeper than
a bound by :func:`too_deep` (``jobs/domain/requests.py`` sets the bounds: a
value nested a few hundred levels is stored fine but cannot be rendered back,
so every later read of it would fail). The stored body is the caller's own
dict, never the SDK's dump of it.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from jobs.domain import sdk_shapes
from jobs.errors import InvalidRequest
from jobs.storage.store import Store

Path = tuple[str | int, ...]
Problem = tuple[Path, str]

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_PROBLEMS = 20


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def explain(problems: list[Problem], prefix: str = "") -> str:
    head: Path = (prefix,) if prefix else ()
    return "; ".join(f"{dotted((*head, *path)) or 'value'}: {msg}" for path, msg in problems)


def json_value_problems(value: Any, path: Path = ()) -> list[Problem]:
    """Strings that cannot be encoded as UTF-8 (a lone surrogate such as
    ``"\\ud800"``) and non-finite numbers (NaN, Infinity): JSON has neither."""
    try:  # the C encoder finds there is nothing to report far faster than a walk
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        return []
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        pass
    out: list[Problem] = []
    stack: list[tuple[Path, Any]] = [(path, value)]
    while stack and len(out) < MAX_PROBLEMS:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            out.append((where, f"{v} is not a JSON number"))
        elif isinstance(v, str) and not _encodable(v):
            out.append((where, "the string holds a lone surrogate and cannot be encoded"))
        elif isinstance(v, dict):
            for k, x in reversed(list(v.items())):
                if isinstance(k, str) and not _encodable(k):
                    out.append((where, "a key holds a lone surrogate and cannot be encoded"))
                stack.append(((*where, str(k)), x))
        elif isinstance(v, list):
            stack.extend(((*where, i), x) for i, x in reversed(list(enumerate(v))))
    return out


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests objects and arrays (a scalar is 0, ``[]`` and
    ``{}`` are 1, ``[[1]]`` is 2), counted without recursion and at most to
    ``limit + 1``: enough to tell that it is over ``limit`` without walking
    the rest of a hostile value."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list | tuple):
            children = v
        else:
            continue
        d += 1
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((x, d) for x in children if isinstance(x, dict | list | tuple))
    return deepest


def too_deep(value: Any, limit: int, what: str = "value") -> str | None:
    """The problem with ``value`` if it nests deeper than ``limit`` levels, else
    ``None``: shared by every intake of free-form JSON (a request's
    ``metadata`` and ``interaction``; batch lines may use it too)."""
    if nesting_depth(value, limit) > limit:
        return f"{what} is nested more than {limit} levels deep"
    return None


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@cache
def request_models() -> tuple[type[BaseModel], type[BaseModel]]:
    """The SDK's create models (for a model, for an agent), imported on first
    use: google-genai takes seconds to import, which a worker (it checks no
    body) and the API's start-up need not pay."""
    from google.genai._gaos.types.interactions import createagentinteraction as agent
    from google.genai._gaos.types.interactions import createmodelinteraction as model

    return model.CreateModelInteraction, agent.CreateAgentInteraction


def sdk_problems(body: dict[str, Any], *, forward_unknown: bool = False) -> list[Problem]:
    """What the SDK's request model finds wrong with ``body`` (paths inside it)."""
    for_model, for_agent = request_models()
    model = for_agent if "agent" in body else for_model
    key = sdk_shapes.cache_key(body, forward_unknown, model is for_agent)
    if sdk_shapes.passed(key):  # a body with this skeleton passed: this one does
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated fields
            parsed = model.model_validate(body)
    except ValidationError as e:
        return _from_validation(e, body)
    out: list[Problem] = []
    _unknowns(parsed, (), out, forward_unknown)
    if not out:
        sdk_shapes.remember(key)
    return out[:MAX_PROBLEMS]


def _from_validation(e: ValidationError, body: dict[str, Any]) -> list[Problem]:
    """One problem per data path, its distinct messages joined (a value no
    member of a union accepts gets each member's complaint, most alike)."""
    by_path: dict[Path, list[str]] = {}
    for err in e.errors(include_url=False):
        msgs = by_path.setdefault(_data_path(err["loc"], body), [])
        if err["msg"] not in msgs:
            msgs.append(err["msg"])
    return [(p, " | ".join(m[:3])) for p, m in list(by_path.items())[:MAX_PROBLEMS]]


def _data_path(loc: tuple[str | int, ...], data: Any) -> Path:
    """The part of a pydantic error location that is a path in ``data``: the
    names pydantic gives union members (``TextContent``, ``list[...]``) go."""
    path: list[str | int] = []
    cur = data
    for i, p in enumerate(loc):
        if isinstance(cur, dict) and isinstance(p, str) and p in cur:
            path.append(p)
            cur = cur[p]
        elif isinstance(cur, list) and isinstance(p, int) and 0 <= p < len(cur):
            path.append(p)
            cur = cur[p]
        elif i == len(loc) - 1 and isinstance(cur, dict) and _FIELD_NAME.match(str(p)):
            path.append(p)  # a missing field
    return tuple(path)


@cache
def _shape(cls: type[BaseModel]) -> tuple[dict[str, str], bool]:
    """A model class's field names with their aliases, and whether it takes any
    field (an open model: extra fields are its own, not mistakes)."""
    fields = cls.model_fields
    open_model = not fields or "__pydantic_extra__" in vars(cls).get("__annotations__", {})
    return {name: f.alias or name for name, f in fields.items()}, open_model


def _unknowns(v: Any, path: Path, out: list[Problem], forward_unknown: bool) -> None:
    if isinstance(v, BaseModel):
        if getattr(v, "is_unknown", False) is True:  # the SDK's Unknown* placeholder
            raw = getattr(v, "raw", None)
            kind = raw.get("type") if isinstance(raw, dict) else None
            out.append(((*path, "type"), f"unknown type {kind!r} (google-genai knows no such)"))
            return
        aliases, open_model = _shape(type(v))
        if not forward_unknown and not open_model:
            for k in v.__pydantic_extra__ or {}:
                out.append(((*path, k), "unknown field (the API answers 400 'Unknown name')"))
        for name in v.model_fields_set:
            if name in aliases:
                _unknowns(v.__dict__.get(name), (*path, aliases[name]), out, forward_unknown)
    elif isinstance(v, list | tuple):
        for i, x in enumerate(v):
            _unknowns(x, (*path, i), out, forward_unknown)
    elif isinstance(v, dict):
        for k, x in v.items():
            _unknowns(x, (*path, str(k)), out, forward_unknown)


async def previous_problem(store: Store, tenant: str, body: dict[str, Any]) -> str | None:
    """``previous_interaction_id`` must be an interaction of one of the
    tenant's own jobs: interq's key would otherwise read another's context."""
    prev = body.get("previous_interaction_id")
    if prev is None:
        return None
    [owner] = await store.interaction_tenants([prev])
    return None if owner == tenant else not_own_interaction(prev)


def not_own_interaction(prev: Any) -> str:
    """The problem of a ``previous_interaction_id`` that is not one of the
    tenant's own (batches look them up many at a time: ``Store.interaction_tenants``)."""
    return f"previous_interaction_id {prev!r} is not an interaction of one of your jobs"


async def check_create(
    store: Store, tenant: str, body: dict[str, Any], *, forward_unknown: bool
) -> None:
    """``POST /v1/jobs``: the SDK's types, then the chain; 422
    ``invalid_request`` naming the field (``details``: each ``loc`` and ``msg``)."""
    problems = sdk_problems(body, forward_unknown=forward_unknown)
    if not problems:
        wrong_chain = await previous_problem(store, tenant, body)
        problems = [(("previous_interaction_id",), wrong_chain)] if wrong_chain else []
    if problems:
        details = [{"loc": ["body", "interaction", *p], "msg": m} for p, m in problems]
        raise InvalidRequest(explain(problems, "interaction"), details=details)


def batch_line_problem(
    interaction: dict[str, Any], metadata: Any, *, forward_unknown: bool
) -> str | None:
    """What is wrong with a batch line that its model did not catch, as the
    line's error, or ``None``. A line's ``previous_interaction_id`` is checked
    against the tenant's jobs afterwards (``batch_ingest.check_intake``)."""
    problems = sdk_problems(interaction, forward_unknown=forward_unknown)
    return explain(problems, "interaction") if problems else None
