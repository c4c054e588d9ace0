"""A create body's skeleton, under which ``checks.sdk_problems`` remembers that
a body passed the SDK's check, so that the lines of a batch that differ only in
free text (``input``, a part's ``text``, ``system_instruction``) pay the SDK's
pydantic validation once.

Which strings are free is derived, once and on first use, from the SDK's own
request models (``google.genai._gaos.types.interactions``): every model
reachable from ``CreateModelInteraction`` and ``CreateAgentInteraction``
through its field annotations (Union, Optional, list, dict, Annotated, the
variants of its open unions). A key name is **sensitive** when, in any model
that has it, a string under it (its value, or an item of a list that is its
value) can change the verdict: a closed ``Literal``, an Enum, a number or a
bool (pydantic's lax mode reads ``"5"`` as 5), a constraint or a validator that
reads the string. Every discriminator key of the SDK's unions is sensitive. A
key whose value is a dict whose *values* are such types is **opaque**: every
string under it counts. Plain ``str``, the SDK's open enums
(``Union[Literal[...], UnrecognizedStr]``), unions holding an unconstrained
``str`` and ``Any`` accept every string alike.

The skeleton is the body with every string under a key that is not sensitive
made ``""``; keys, numbers, bools, null and sensitive strings stay. Two bodies
with one skeleton reach the same fields of the same models with strings that
the SDK accepts or refuses alike, so their verdicts are the same. What the walk
cannot vouch for turns the cache off rather than guess (``Shapes.unbounded``):
a model or field validator, a validator function not known here, a model
config beyond the SDK's usual one, a callable discriminator, a type not known
here. A body that is odd (a non-finite float, a non-JSON value) or whose
skeleton is over ``MAX_SKELETON`` bytes gets no skeleton and is always checked.
"""

from __future__ import annotations

import collections.abc as cabc
import enum
import threading
import types
from collections import OrderedDict
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import BaseModel
from pydantic.fields import FieldInfo

MAX_SKELETON = 4096  # bytes; a bigger body is checked every time
MAX_ENTRIES = 4096  # skeletons remembered as passing (least recently used go)

# What a string at a position does to the verdict: every string is accepted,
# every string is refused (a model, a list), or it depends on the string.
ACCEPT, REJECT, SCALAR = 0, 1, 2

# The SDK model config keys that do not change how a string validates.
_PLAIN_CONFIG = {"arbitrary_types_allowed", "extra", "frozen", "populate_by_name"}
_PLAIN_CONFIG |= {"protected_namespaces", "title", "json_schema_extra"}
_SCALARS = (int, float, bool, bytes, bytearray, complex)
_SEQUENCES = (list, tuple, set, frozenset, cabc.Sequence, cabc.Set)
_MAPPINGS = (dict, cabc.Mapping)


@dataclass(frozen=True)
class Shapes:
    sensitive: frozenset[str]
    opaque: frozenset[str]
    unbounded: tuple[str, ...]  # why no skeleton can be trusted (empty: it can)
    models: int  # how many SDK models were walked


@dataclass
class _Acc:
    """One field's findings: a string in a list under it matters (``blind``
    false), or a string under a free key of a dict under it does (``opaque``)."""

    blind: bool = True
    opaque: bool = False


@dataclass
class _Walk:
    sdk: Any  # the SDK's functions this walk knows (see ``_sdk``)
    sensitive: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    unbounded: list[str] = field(default_factory=list)
    seen: set[type[BaseModel]] = field(default_factory=set)
    todo: list[type[BaseModel]] = field(default_factory=list)

    def model(self, cls: type[BaseModel]) -> None:
        if cls not in self.seen:
            self.seen.add(cls)
            self.todo.append(cls)


def _sdk() -> types.SimpleNamespace:
    from google.genai._gaos.types.base64fileinput import encode_base64_file_input
    from google.genai._gaos.types.basemodel import UnrecognizedStr
    from google.genai._gaos.types.interactions import createagentinteraction as agent
    from google.genai._gaos.types.interactions import createmodelinteraction as model
    from google.genai._gaos.utils import serializers, unions

    return types.SimpleNamespace(
        roots=(model.CreateModelInteraction, agent.CreateAgentInteraction),
        open_str=UnrecognizedStr,
        open_union=unions.parse_open_union,
        decline=unions.decline_sibling_variants,
        dispatch=unions.dispatch_open_union_members,
        passthrough=encode_base64_file_input,
        validate_int=serializers.validate_int,
        serializers=serializers.__name__,
    )


@cache
def shapes() -> Shapes:
    """The sensitive and opaque key names, derived from the SDK's models (the
    SDK is imported here, on first use: it takes seconds)."""
    w = _Walk(_sdk())
    for root in w.sdk.roots:
        w.model(root)
    while w.todo:
        _visit(w.todo.pop(), w)
    return Shapes(frozenset(w.sensitive), frozenset(w.opaque), tuple(w.unbounded), len(w.seen))


def _visit(cls: type[BaseModel], w: _Walk) -> None:
    _check_class(cls, w)
    for name, f in cls.model_fields.items():
        acc = _Acc()
        fate = _meta(_fate(f.annotation, w, acc), f.metadata, w, acc)
        if f.discriminator is not None:
            _discriminator(f.discriminator, w)
        keys = {name, *(k for k in (f.alias, f.validation_alias) if k is not None)}
        if not all(isinstance(k, str) for k in keys):
            w.unbounded.append(f"{cls.__name__}.{name}: an alias path or choices")
        names = {k for k in keys if isinstance(k, str)}
        if fate == SCALAR or not acc.blind or acc.opaque:
            w.sensitive |= names
        if acc.opaque:
            w.opaque |= names


def _check_class(cls: type[BaseModel], w: _Walk) -> None:
    """What about a model as a whole could read any of its strings."""
    d = cls.__pydantic_decorators__
    if d.model_validators or d.field_validators or d.root_validators or d.validators:
        w.unbounded.append(f"{cls.__name__}: a validator")
    if not set(cls.model_config) <= _PLAIN_CONFIG:
        w.unbounded.append(f"{cls.__name__}: config {sorted(cls.model_config)}")
    if cls.__pydantic_post_init__ is not None and not _marks_fields_set(cls):
        w.unbounded.append(f"{cls.__name__}: model_post_init")
    for base in cls.__mro__[: cls.__mro__.index(BaseModel)]:
        if "__get_pydantic_core_schema__" in vars(base):
            w.unbounded.append(f"{cls.__name__}: its own core schema")
    schema: Any = cls.__pydantic_core_schema__
    while isinstance(schema, dict) and schema.get("type") in ("definitions", "model"):
        schema = schema.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "model-fields":
        w.unbounded.append(f"{cls.__name__}: an unexpected core schema")
    elif (schema.get("extras_schema") or {"type": "any"})["type"] != "any":
        w.unbounded.append(f"{cls.__name__}: typed extra fields")


def _marks_fields_set(cls: type[BaseModel]) -> bool:
    """Whether the model's ``model_post_init`` is the SDK's usual one, which
    only adds a constant field name to ``__pydantic_fields_set__`` (it names
    nothing else: no call, no read of a field)."""
    code = getattr(cls.model_post_init, "__code__", None)
    return code is not None and set(code.co_names) <= {"__pydantic_fields_set__", "update"}


def _fate(tp: Any, w: _Walk, acc: _Acc) -> int:
    """What a string validated as ``tp`` does to the verdict; lists' items
    and dicts' values are noted in ``acc`` and the models met queued."""
    while type(tp).__name__ == "TypeAliasType":
        tp = tp.__value__
    origin = get_origin(tp)
    if tp is str or tp is w.sdk.open_str or tp is Any or tp is object:
        return ACCEPT
    if tp is None or tp is type(None):
        return REJECT
    if origin is Annotated:
        base, *meta = get_args(tp)
        return _meta(_fate(base, w, acc), meta, w, acc)
    if origin is Union or origin is types.UnionType:
        return _union([_fate(a, w, acc) for a in get_args(tp)])
    if origin is Literal:
        return SCALAR
    if origin in _SEQUENCES or tp in _SEQUENCES:
        items = [a for a in get_args(tp) if a is not Ellipsis]
        if any(_fate(a, w, acc) == SCALAR for a in items):
            acc.blind = False
        return REJECT
    if origin in _MAPPINGS or tp in _MAPPINGS:
        args = get_args(tp)
        sub = _Acc()  # a dict's values sit under keys of the caller's choosing
        value_fate = _fate(args[1], w, sub) if len(args) == 2 else ACCEPT
        if value_fate == SCALAR or not sub.blind or sub.opaque:
            acc.opaque = True
        return REJECT
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        w.model(tp)
        return REJECT
    if isinstance(tp, type) and (tp in _SCALARS or issubclass(tp, enum.Enum)):
        return SCALAR
    w.unbounded.append(f"type {tp!r}")
    return SCALAR


def _union(fates: list[int]) -> int:
    """A union accepts a string when any member does: one member accepting
    every string makes the union accept every string."""
    if ACCEPT in fates:
        return ACCEPT
    return REJECT if all(f == REJECT for f in fates) else SCALAR


def _meta(fate: int, meta: Iterable[Any], w: _Walk, acc: _Acc) -> int:
    """``fate`` as ``Annotated`` metadata changes it."""
    from pydantic import AfterValidator, BeforeValidator, Discriminator, WrapValidator
    from pydantic.functional_serializers import PlainSerializer, WrapSerializer

    for m in meta:
        if isinstance(m, FieldInfo):
            if m.discriminator is not None:
                _discriminator(m.discriminator, w)
            fate = _meta(fate, m.metadata, w, acc)
        elif isinstance(m, Discriminator):
            _discriminator(m.discriminator, w)
        elif isinstance(m, BeforeValidator | AfterValidator | WrapValidator):
            fate = _validator(m.func, fate, w, acc)
        elif isinstance(m, PlainSerializer | WrapSerializer):
            continue  # how a value is dumped, not whether it is valid
        elif hasattr(m, "__get_pydantic_core_schema__"):
            w.unbounded.append(f"metadata {m!r}")
        else:  # a constraint: pattern, length, bounds, strict ...
            fate = SCALAR
    return fate


def _validator(func: Any, fate: int, w: _Walk, acc: _Acc) -> int:
    """A validator function's effect on strings, for the SDK's own ones; any
    other could read anything."""
    sdk = w.sdk
    inner = func.func if isinstance(func, partial) else None
    kw = func.keywords if isinstance(func, partial) else {}
    if inner is sdk.open_union:  # refuses a non-dict; reads the dict's disc_key
        w.sensitive.add(kw["disc_key"])
        for variant in [*kw["variants"].values(), kw["unknown_cls"]]:
            _fate(variant, w, acc)
        return REJECT
    if inner is sdk.decline:  # reads the sibling discriminators of a dict
        w.sensitive.update(key for key, _ in kw["sibling_variants"])
        return fate
    if inner is sdk.dispatch:  # reads its members' discriminators of a dict
        for member in kw["members"]:
            _fate(member, w, acc)
        return fate
    if func is sdk.passthrough:  # a str passes unchanged
        return fate
    if func is sdk.validate_int or _is_const_check(func, sdk.serializers):
        return SCALAR
    w.unbounded.append(f"validator {func!r}")
    return SCALAR


def _is_const_check(func: Any, module: str) -> bool:
    qualname = getattr(func, "__qualname__", "")
    return bool(qualname == "validate_const.<locals>.validate" and func.__module__ == module)


def _discriminator(disc: Any, w: _Walk) -> None:
    from pydantic import Discriminator

    if isinstance(disc, Discriminator):
        disc = disc.discriminator
    if isinstance(disc, str):
        w.sensitive.add(disc)
    else:
        w.unbounded.append(f"discriminator {disc!r}")


# ------------------------------------------------------------------ skeleton


class _Odd(Exception):
    """A value with no faithful skeleton."""


class _Every:
    """A key set holding every key: under an opaque key, every string stays."""

    def __contains__(self, key: object) -> bool:
        return True


_EVERY = _Every()
_NONE: frozenset[str] = frozenset()


def skeleton(body: Any) -> bytes | None:
    """``body`` with its free strings blanked, as bytes; ``None`` when it has
    no skeleton worth keeping (odd, too large, or the SDK's models have
    something this module cannot vouch for)."""
    s = shapes()
    if s.unbounded or type(body) is not dict:
        return None
    try:
        out = orjson.dumps(_strip(body, False, s.sensitive, s.opaque))
    except (_Odd, orjson.JSONEncodeError, RecursionError):
        return None
    return out if len(out) <= MAX_SKELETON else None


def _strip(v: Any, keep: bool, sensitive: Container[str], opaque: Container[str]) -> Any:
    t = type(v)
    if t is str:
        return v if keep else ""
    if t is dict:
        return {
            k: _strip(x, True, _EVERY, _NONE)
            if k in opaque
            else _strip(x, k in sensitive, sensitive, opaque)
            for k, x in v.items()
        }
    if t is list:
        return [_strip(x, keep, sensitive, opaque) for x in v]
    if t is float and v - v != 0.0:  # NaN, Infinity: orjson would write null
        raise _Odd
    if t is int or t is bool or t is float or v is None:
        return v
    raise _Odd


# --------------------------------------------------------------------- cache

CacheKey = tuple[bytes, bool, bool]
_passed: OrderedDict[CacheKey, None] = OrderedDict()
_lock = threading.Lock()
_enabled = True


def cache_key(body: Any, forward_unknown: bool, for_agent: bool) -> CacheKey | None:
    if not _enabled:
        return None
    skel = skeleton(body)
    return None if skel is None else (skel, forward_unknown, for_agent)


def passed(key: CacheKey | None) -> bool:
    """Whether a body with this key passed the SDK's check before."""
    if key is None:
        return False
    with _lock:
        if key not in _passed:
            return False
        _passed.move_to_end(key)
        return True


def remember(key: CacheKey | None) -> None:
    """A body with this key passed the SDK's check."""
    if key is None:
        return
    with _lock:
        _passed[key] = None
        _passed.move_to_end(key)
        while len(_passed) > MAX_ENTRIES:
            _passed.popitem(last=False)


def clear() -> None:
    with _lock:
        _passed.clear()


def set_enabled(on: bool) -> None:
    """Turn the cache on or off (off: every body is checked by the SDK)."""
    global _enabled
    _enabled = on
