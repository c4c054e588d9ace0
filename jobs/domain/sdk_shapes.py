"""The skeleton under which ``checks.sdk_problems`` remembers that a create body
passed the SDK's check, so that a batch's lines that differ only in free text
(``input``, a part's ``text``, ``system_instruction``) are validated once.

The strings that can change the verdict are found once, on first use, in the
SDK's request models (every model reachable from the two create models through
Union, Optional, list, dict, Annotated and the SDK's open unions). A key is
**sensitive** when in any model a string as its value (or in a list that is its
value) is read: a closed ``Literal``, an Enum, a number or a bool (lax mode
reads ``"5"``), a constraint, a validator; every discriminator key is.
``str``, ``Any``, open enums (``Union[Literal[...], UnrecognizedStr]``) and unions
with a plain ``str`` take every string alike. What the walk cannot vouch for (a
model or unknown validator, an odd config or discriminator, a dict of such
values, an unknown type) turns the cache off (``Shapes.unbounded``). The skeleton
blanks each string under a key not sensitive; an odd or large body has none.
"""

from __future__ import annotations

import collections.abc as cabc
import enum
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache, partial
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, Discriminator, WrapValidator
from pydantic.fields import FieldInfo
from pydantic.functional_serializers import PlainSerializer, WrapSerializer

MAX_SKELETON = 4096  # bytes; a bigger body is checked every time
MAX_ENTRIES = 4096  # skeletons remembered as passing (least recently used go)

# A string at a position: every string is accepted, or refused, or it depends.
ACCEPT, REJECT, SCALAR = 0, 1, 2
_PLAIN_CONFIG = {"arbitrary_types_allowed", "extra", "frozen", "populate_by_name"}
_PLAIN_CONFIG |= {"protected_namespaces", "title", "json_schema_extra"}
_SCALARS = (int, float, bool, bytes, bytearray, complex)
_SEQUENCES = (list, tuple, set, frozenset, cabc.Sequence, cabc.Set)
_MAPPINGS = (dict, cabc.Mapping)
# The SDK's validators that check a scalar only: int("...") and a comparison with a constant.
_SCALAR_CHECKS = {"utils.serializers.validate_int"}
_SCALAR_CHECKS.add("utils.serializers.validate_const.<locals>.validate")


@dataclass(frozen=True)
class Shapes:
    sensitive: frozenset[str]
    unbounded: tuple[str, ...]  # why no skeleton can be trusted (empty: it can)
    models: int  # how many SDK models were walked


@dataclass
class _Acc:  # a field's: strings in its lists are read (not blind)
    blind: bool = True


@dataclass
class _Walk:
    sensitive: set[str] = field(default_factory=set)
    unbounded: list[str] = field(default_factory=list)
    seen: set[type[BaseModel]] = field(default_factory=set)
    todo: list[type[BaseModel]] = field(default_factory=list)

    def model(self, cls: type[BaseModel]) -> None:
        self.todo += [] if cls in self.seen else [cls]
        self.seen.add(cls)


def _sdk_name(obj: Any) -> str:
    """An SDK function's or class's name (``utils.unions.parse_open_union``)."""
    name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    return name.removeprefix("google.genai._gaos.")


@cache
def shapes() -> Shapes:
    """The create models' sensitive keys (the SDK is imported on first use: slow)."""
    from google.genai._gaos.types.interactions import createagentinteraction as agent
    from google.genai._gaos.types.interactions import createmodelinteraction as model

    return derive(model.CreateModelInteraction, agent.CreateAgentInteraction)


def derive(*roots: type[BaseModel]) -> Shapes:
    """The sensitive keys of ``roots`` and of every model they reach."""
    w = _Walk()
    for root in roots:
        w.model(root)
    while w.todo:
        _visit(w.todo.pop(), w)
    return Shapes(frozenset(w.sensitive), tuple(w.unbounded), len(w.seen))


def _visit(cls: type[BaseModel], w: _Walk) -> None:
    _check_class(cls, w)
    for name, f in cls.model_fields.items():
        acc = _Acc()
        fate = _meta(_fate(f.annotation, w, acc), f.metadata, w, acc)
        if f.discriminator is not None:
            _discriminator(f.discriminator, w)
        keys = [name, f.alias, f.validation_alias]
        if not all(k is None or isinstance(k, str) for k in keys):
            w.unbounded.append(f"{cls.__name__}.{name}: an alias path or choices")
        if fate == SCALAR or not acc.blind:
            w.sensitive |= {k for k in keys if isinstance(k, str)}


def _check_class(cls: type[BaseModel], w: _Walk) -> None:
    """What about a model as a whole could read any of its strings."""
    d = cls.__pydantic_decorators__
    schema: Any = cls.__pydantic_core_schema__
    while isinstance(schema, dict) and schema.get("type") in ("definitions", "model"):
        schema = schema.get("schema")
    fields = isinstance(schema, dict) and schema.get("type") == "model-fields"
    bad = {
        "a validator": d.model_validators
        or d.field_validators
        or d.root_validators
        or d.validators,
        "a config": not set(cls.model_config) <= _PLAIN_CONFIG,
        "model_post_init": cls.__pydantic_post_init__ is not None and not _marks_fields_set(cls),
        "its own core schema": any(
            "__get_pydantic_core_schema__" in vars(b)
            for b in cls.__mro__[: cls.__mro__.index(BaseModel)]
        ),
        "an unexpected core schema": not fields,
        "typed extra fields": fields
        and (schema.get("extras_schema") or {}).get("type", "any") != "any",
    }
    w.unbounded += [f"{cls.__name__}: {why}" for why, yes in bad.items() if yes]


def _marks_fields_set(cls: type[BaseModel]) -> bool:
    """The SDK's usual ``model_post_init``: it names nothing but ``update`` of
    ``__pydantic_fields_set__`` (a constant field name is added), reads nothing."""
    code = getattr(cls.model_post_init, "__code__", None)
    return code is not None and set(code.co_names) <= {"__pydantic_fields_set__", "update"}


def _fate(tp: Any, w: _Walk, acc: _Acc) -> int:
    """What a string validated as ``tp`` does to the verdict; lists' items
    and dicts' values are noted in ``acc`` and the models met queued."""
    while type(tp).__name__ == "TypeAliasType":
        tp = tp.__value__
    origin = get_origin(tp)
    if tp is str or tp is Any or tp is object or _sdk_name(tp) == "types.basemodel.UnrecognizedStr":
        return ACCEPT
    if tp is None or tp is type(None):
        return REJECT
    if origin is Annotated:
        base, *meta = get_args(tp)
        return _meta(_fate(base, w, acc), meta, w, acc)
    if origin is Union or origin is types.UnionType:  # one member taking every string decides
        fates = {_fate(a, w, acc) for a in get_args(tp)}
        return ACCEPT if ACCEPT in fates else REJECT if fates == {REJECT} else SCALAR
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
        if (_fate(args[1], w, sub) if len(args) == 2 else ACCEPT) == SCALAR or not sub.blind:
            w.unbounded.append(f"{tp!r}: its values' strings are read")
        return REJECT
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        w.model(tp)
        return REJECT
    if isinstance(tp, type) and (tp in _SCALARS or issubclass(tp, enum.Enum)):
        return SCALAR
    w.unbounded.append(f"type {tp!r}")
    return SCALAR


def _meta(fate: int, meta: Iterable[Any], w: _Walk, acc: _Acc) -> int:
    """``fate`` as ``Annotated`` metadata changes it."""
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
    name = _sdk_name(func.func if isinstance(func, partial) else func)
    kw = func.keywords if isinstance(func, partial) else {}
    if name == "utils.unions.parse_open_union":  # refuses a non-dict, reads its disc_key
        w.sensitive.add(kw["disc_key"])
        for variant in [*kw["variants"].values(), kw["unknown_cls"]]:
            _fate(variant, w, acc)
        return REJECT
    if name == "utils.unions.decline_sibling_variants":  # reads a dict's discriminators
        w.sensitive.update(key for key, _ in kw["sibling_variants"])
        return fate
    if name == "utils.unions.dispatch_open_union_members":  # the same, of its members
        for member in kw["members"]:
            _fate(member, w, acc)
        return fate
    if name == "types.base64fileinput.encode_base64_file_input":  # a str passes as it is
        return fate
    if name in _SCALAR_CHECKS:
        return SCALAR
    w.unbounded.append(f"validator {func!r}")
    return SCALAR


def _discriminator(disc: Any, w: _Walk) -> None:
    disc = disc.discriminator if isinstance(disc, Discriminator) else disc
    if not isinstance(disc, str):  # a callable: it could read any key
        w.unbounded.append(f"discriminator {disc!r}")
    w.sensitive.add(str(disc))


# ------------------------------------------------------------------ skeleton


def skeleton(body: Any) -> bytes | None:
    """``body`` with its free strings blanked, as bytes; ``None`` for an odd or
    large body, or when the SDK's models have what this module cannot vouch for."""
    s = shapes()
    if s.unbounded or type(body) is not dict:
        return None
    try:
        out = orjson.dumps(_strip(body, False, s.sensitive))
    except (TypeError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        return None
    return out if len(out) <= MAX_SKELETON else None


def _strip(v: Any, keep: bool, sensitive: frozenset[str]) -> Any:
    t = type(v)
    if t is str:
        return v if keep else ""
    if t is dict:
        return {k: _strip(x, k in sensitive, sensitive) for k, x in v.items()}
    if t is list:
        return [_strip(x, keep, sensitive) for x in v]
    if t is float and v - v != 0.0:  # NaN, Infinity: orjson would write null
        raise TypeError("not a JSON number")
    if t is int or t is bool or t is float or v is None:
        return v
    raise TypeError(f"not a JSON value: {t.__name__}")


# --------------------------------------------------------------------- cache

CacheKey = tuple[bytes, bool, bool]  # (skeleton, forward_unknown, for an agent)
_enabled = True


def cache_key(body: Any, forward_unknown: bool, for_agent: bool) -> CacheKey | None:
    skel = skeleton(body) if _enabled else None
    return None if skel is None else (skel, forward_unknown, for_agent)


@lru_cache(maxsize=MAX_ENTRIES)  # thread-safe; the least recently used go
def _verdict(key: CacheKey) -> list[bool]:
    return [False]  # [True] once a body with this key passed


def passed(key: CacheKey | None) -> bool:
    """Whether a body with this key passed the SDK's check before."""
    return key is not None and _verdict(key)[0]


def remember(key: CacheKey | None) -> None:
    """A body with this key passed the SDK's check."""
    if key is not None:
        _verdict(key)[0] = True


def clear() -> None:
    _verdict.cache_clear()


def set_enabled(on: bool) -> None:
    """Turn the cache on or off (off: every body is checked by the SDK)."""
    global _enabled
    _enabled = on
