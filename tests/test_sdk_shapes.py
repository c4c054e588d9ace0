"""The cache of ``checks.sdk_problems`` (``jobs/domain/sdk_shapes.py``) is sound:
a body is let through on a cached verdict only when the SDK would let it
through too.

* the sensitive keys derived from the SDK's models are the expected ones, and
  the derivation's rules hold on small models made here;
* each field whose key is not sensitive validates every string alike, asked of
  pydantic itself (a ``TypeAdapter`` per field, a battery of strings);
* for a corpus of bodies, valid and not, every variant with a string changed
  gets the same answer from the cached path (primed by the original) as from
  the SDK uncached, and a variant with the original's skeleton the same verdict;
* a second body of one skeleton does not reach the SDK's model.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from google.genai._gaos.types.basemodel import UnrecognizedStr
from google.genai._gaos.types.interactions.createagentinteraction import CreateAgentInteraction
from google.genai._gaos.types.interactions.createmodelinteraction import CreateModelInteraction
from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from jobs.domain import checks, sdk_shapes
from jobs.domain.checks import Problem

M = "sim-model"
TEXT = {"type": "text", "text": "hello"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "a city", "enum": ["Paris"]}},
        "required": ["city"],
    },
}
STEPS = [
    {"type": "user_input", "content": [TEXT]},
    {"type": "model_output", "content": [{"type": "text", "text": "answer"}]},
    {"type": "function_call", "id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}},
    {"type": "function_result", "call_id": "c1", "name": "get_weather", "result": "sunny"},
]
GENERATION = {"temperature": 0.5, "top_p": 0.9, "seed": 7, "max_output_tokens": 100}
GENERATION |= {"thinking_level": "low", "stop_sequences": ["END", "STOP"]}
CHAINED = {"labels": {"team": "a"}, "environment": "env-1", "previous_interaction_id": "i-1"}
DEEP = {"type": "deep-research", "thinking_summaries": "auto", "collaborative_planning": True}
CORPUS: dict[str, dict[str, Any]] = {
    "plain": {"model": M, "input": "item 1 [sim duration=1]"},
    "known model": {"model": "gemini-2.5-flash", "input": "hi", "system_instruction": "brief"},
    "content list": {
        "model": M,
        "input": [TEXT, {"type": "image", "data": "aGk=", "mime_type": "image/png"}],
    },
    "one content": {"model": M, "input": {"type": "text", "text": "just one"}},
    "steps": {"model": M, "input": STEPS},
    "generation_config": {"model": M, "input": "x", "generation_config": GENERATION},
    "response_modalities": {"model": M, "input": "x", "response_modalities": ["text", "image"]},
    "function tool": {"model": M, "input": "x", "tools": [WEATHER, {"type": "google_search"}]},
    "labels and env": {"model": M, "input": "x", **CHAINED},
    "safety": {
        "model": M,
        "input": "x",
        "safety_settings": [{"type": "hate_speech", "threshold": "block_low_and_above"}],
    },
    "agent": {"agent": "deep-research-pro-preview-12-2025", "input": "look", "agent_config": DEEP},
    "agent dynamic": {"agent": "my-agent", "input": [TEXT], "agent_config": {"type": "dynamic"}},
    # refused, or passing only for the string it holds
    "bad temperature": {"model": M, "input": "x", "generation_config": {"temperature": "hot"}},
    "string temperature": {"model": M, "input": "x", "generation_config": {"temperature": "0.5"}},
    "string stream": {"model": M, "input": "x", "stream": "true"},
    "misspelt field": {"model": M, "input": "x", "generation_config": {"temprature": 0.5}},
    "unknown tool": {"model": M, "input": "x", "tools": [{"type": "frobnicate", "name": "f"}]},
    "unknown part": {"model": M, "input": [{"type": "hologram", "text": "x"}]},
    "unknown nested field": {
        "model": M,
        "input": [{"type": "user_input", "content": [{**TEXT, "colour": "red"}]}],
    },
    "input number": {"model": M, "input": 5},
    "input list of str": {"model": M, "input": ["a", "b"]},
    "no model": {"input": "x"},
    "model number": {"model": 5, "input": "x"},
    "system number": {"model": M, "input": "x", "system_instruction": 5},
    "modalities str": {"model": M, "input": "x", "response_modalities": "text"},
    "text missing": {"model": M, "input": [{"type": "text"}]},
    "labels number": {"model": M, "input": "x", "labels": {"team": 1}},
    "agent bad config": {"agent": "a", "input": "x", "agent_config": {"type": "mystery"}},
    "agent config field": {"agent": "a", "input": "x", "agent_config": {**DEEP, "depth": "x"}},
}
# What each string is changed to: other text, empty, long, and strings some
# types read (a number, a bool, known enum and discriminator values).
REPLACEMENTS = ["other text", "", "long " * 2000, "5", "true", "text", "function", "image/png"]


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    sdk_shapes.clear()
    yield
    sdk_shapes.set_enabled(True)
    sdk_shapes.clear()


def uncached(body: dict[str, Any], forward: bool) -> list[Problem]:
    sdk_shapes.set_enabled(False)
    try:
        return checks.sdk_problems(body, forward_unknown=forward)
    finally:
        sdk_shapes.set_enabled(True)


def string_paths(v: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(v, str):
        yield path
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from string_paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from string_paths(x, (*path, i))


def replaced(v: Any, path: tuple[Any, ...], new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(v, dict):
        return {k: replaced(x, rest, new) if k == head else x for k, x in v.items()}
    return [replaced(x, rest, new) if i == head else x for i, x in enumerate(v)]


def variants(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each string changed alone to each replacement, and every string whose
    change keeps the skeleton changed at once."""
    paths = list(string_paths(body))
    for path in paths:
        for new in REPLACEMENTS:
            yield replaced(body, path, new)
    skel = sdk_shapes.skeleton(body)
    for new in REPLACEMENTS:
        free = [p for p in paths if sdk_shapes.skeleton(replaced(body, p, new)) == skel]
        yield functools.reduce(lambda b, p: replaced(b, p, new), free, body)


# ----------------------------------------------------------- the derivation


def test_the_sensitive_keys_of_the_sdk() -> None:
    shapes = sdk_shapes.shapes()
    print(f"{shapes.models} models; sensitive: {sorted(shapes.sensitive)}")
    assert shapes.unbounded == ()  # the cache is on: the walk vouches for every model
    assert shapes.models > 100
    assert "type" in shapes.sensitive  # the discriminator of every open union
    # numbers and bools: lax mode reads "0.5" and "true"
    assert {"temperature", "top_p", "seed", "max_output_tokens", "stream"} <= shapes.sensitive
    assert "is_unknown" in shapes.sensitive  # a closed Literal[True]
    free = {"input", "text", "system_instruction", "description", "name", "data", "call_id"}
    # open enums: Union[Literal[...], UnrecognizedStr] takes any string
    free |= {"model", "agent", "mime_type", "response_modalities", "thinking_level"}
    free |= {"environment", "labels", "previous_interaction_id", "parameters", "result"}
    assert not free & shapes.sensitive


class Part(BaseModel):
    kind: Literal["a", "b"]
    note: str


class Rules(BaseModel):
    free: str
    maybe: Optional[str] = None  # noqa: UP045 (the SDK's spelling)
    open_enum: Union[Literal["x"], UnrecognizedStr]  # noqa: UP007
    either: int | str  # a plain str member takes every string
    tags: list[str]
    anything: Any
    notes: dict[str, str]
    parts: list[Part]
    closed: Literal["x", "y"]
    count: int | None
    flag: bool
    pattern: Annotated[str, Field(pattern="^a")]
    short: Annotated[str, Field(max_length=3)]
    codes: list[Literal["p"]]
    number_or_part: int | Part
    alias_free: str = Field(alias="aliasFree")
    alias_read: int = Field(alias="aliasRead")


def test_the_derivation_rules() -> None:
    shapes = sdk_shapes.derive(Rules)
    assert shapes.unbounded == ()
    assert shapes.models == 2
    read = {"closed", "count", "flag", "pattern", "short", "codes", "number_or_part", "kind"}
    assert shapes.sensitive == read | {"alias_read", "aliasRead"}


class Checked(BaseModel):
    x: str

    @field_validator("x")
    @classmethod
    def _x(cls, v: str) -> str:
        return v


class Whole(BaseModel):
    x: str

    @model_validator(mode="before")
    @classmethod
    def _all(cls, v: Any) -> Any:
        return v


class Counts(BaseModel):
    by_name: dict[str, int]  # the strings sit under keys of the caller's choosing


class Strict(BaseModel):
    model_config = {"str_max_length": 3}
    x: str


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (Checked, "Checked: a validator"),
        (Whole, "Whole: a validator"),
        (Counts, "dict[str, int]: its values' strings are read"),
        (Strict, "Strict: a config"),
    ],
)
def test_what_the_walk_cannot_vouch_for_turns_it_off(model: type[BaseModel], why: str) -> None:
    class Holder(BaseModel):
        inner: model  # type: ignore[valid-type]

    assert why in sdk_shapes.derive(Holder).unbounded


def sdk_models() -> set[type[BaseModel]]:
    """Every model class the create models reach, found in pydantic's core
    schemas (and the open unions' variant maps), not by the module's walk."""
    found: set[type[BaseModel]] = set()
    stack: list[Any] = [CreateModelInteraction, CreateAgentInteraction]
    while stack:
        v = stack.pop()
        if isinstance(v, type) and issubclass(v, BaseModel):
            if v not in found:
                found.add(v)
                stack.append(v.__pydantic_core_schema__)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, functools.partial):
            stack.extend(v.keywords.values())
        elif typing.get_origin(v) is not None:
            stack.extend(typing.get_args(v))
        elif hasattr(v, "func"):  # a validator in Annotated metadata
            stack.append(v.func)
    return found


def literal_strings(tp: Any) -> set[str]:
    if typing.get_origin(tp) is Literal:
        return {a for a in typing.get_args(tp) if isinstance(a, str)}
    if type(tp).__name__ == "TypeAliasType":
        return literal_strings(tp.__value__)
    return set().union(*(literal_strings(a) for a in typing.get_args(tp)))


def valid(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except (ValidationError, ValueError):
        return False
    return True


def test_a_key_not_sensitive_takes_every_string_alike() -> None:
    """Asked of pydantic: each field under a key that is not sensitive accepts
    (or refuses) a string, a list of strings and a list of lists of strings
    whatever the strings are."""
    models = sdk_models()
    assert len(models) == sdk_shapes.shapes().models  # the walk missed no model
    sensitive = sdk_shapes.shapes().sensitive
    checked = 0
    for cls in models:
        for name, f in cls.model_fields.items():
            if {name, f.alias} & sensitive:
                continue
            tp = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
            adapter: TypeAdapter[Any] = TypeAdapter(tp)
            strings = {"", "x", "5", "1.5", "true", "null", "long " * 500}
            strings |= literal_strings(f.annotation)
            for shape in (lambda s: s, lambda s: [s], lambda s: [[s]]):
                verdicts = {s: valid(adapter, shape(s)) for s in strings}
                assert len(set(verdicts.values())) == 1, (cls.__name__, name, verdicts)
            checked += 1
    assert checked > 150


# ------------------------------------------------------------- the verdicts


@pytest.mark.parametrize("forward", [False, True], ids=["strict", "forward_unknown"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_the_cached_verdict_is_the_sdks(name: str, forward: bool) -> None:
    body = CORPUS[name]
    original = uncached(body, forward)
    skel = sdk_shapes.skeleton(body)
    assert skel is not None
    same_skeleton = 0
    for variant in variants(body):
        expected = uncached(variant, forward)
        sdk_shapes.clear()
        assert checks.sdk_problems(body, forward_unknown=forward) == original  # primes
        assert checks.sdk_problems(variant, forward_unknown=forward) == expected, variant
        if sdk_shapes.skeleton(variant) == skel:
            same_skeleton += 1
            assert (expected == []) == (original == []), variant
    assert same_skeleton > 0  # not vacuous: every body here has a free string


def test_free_strings_are_blanked_and_read_ones_kept() -> None:
    assert sdk_shapes.skeleton(CORPUS["plain"]) == b'{"model":"","input":""}'
    part = {"model": M, "input": [{"type": "text", "text": "a"}], "stream": "true"}
    assert sdk_shapes.skeleton(part) == (
        b'{"model":"","input":[{"type":"text","text":""}],"stream":"true"}'
    )
    hot, warm = (sdk_shapes.skeleton(CORPUS[n]) for n in ("bad temperature", "string temperature"))
    assert hot != warm
    modalities = sdk_shapes.skeleton({"model": M, "response_modalities": ["text", "audio"]})
    assert modalities == b'{"model":"","response_modalities":["",""]}'


@pytest.mark.parametrize(
    "body",
    [
        {"model": M, "generation_config": {"temperature": float("nan")}},
        {"model": M, "generation_config": {"temperature": float("inf")}},
        {"model": M, "input": [{"type": "te\ud800xt", "text": "a"}]},  # lone surrogate, kept
        {"model": M, "seed": 2**70},
        {"model": M, "input": ("a", "b")},
        {"model": M, "tools": [WEATHER] * 200},  # a skeleton over MAX_SKELETON
        ["not", "a", "dict"],
    ],
    ids=["nan", "inf", "surrogate", "bigint", "tuple", "large", "list"],
)
def test_an_odd_body_has_no_skeleton(body: Any) -> None:
    assert sdk_shapes.skeleton(body) is None


def counting(monkeypatch: pytest.MonkeyPatch, model: type[BaseModel]) -> list[Any]:
    calls: list[Any] = []
    real = model.model_validate

    def validate(obj: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(model, "model_validate", validate)
    return calls


def test_a_second_body_of_one_skeleton_skips_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch, CreateModelInteraction)
    agent_calls = counting(monkeypatch, CreateAgentInteraction)
    for i in range(5):
        assert checks.sdk_problems({"model": M, "input": f"item {i} [sim duration=1]"}) == []
    assert len(calls) == 1
    agent = CORPUS["agent"]
    assert checks.sdk_problems(agent) == [] and checks.sdk_problems({**agent, "input": "b"}) == []
    assert len(agent_calls) == 1
    # a refused body is checked every time, and says the same each time
    bad = CORPUS["bad temperature"]
    assert checks.sdk_problems(bad) == checks.sdk_problems(bad) != []
    assert len(calls) == 3
    sdk_shapes.set_enabled(False)  # the cache off: the SDK every time
    assert checks.sdk_problems(CORPUS["plain"]) == checks.sdk_problems(CORPUS["plain"]) == []
    assert len(calls) == 5


def test_forwarding_unknown_fields_is_part_of_the_key() -> None:
    body = {"model": M, "input": "x", "newer_field": "y"}
    assert checks.sdk_problems(body, forward_unknown=True) == []
    [(path, _)] = checks.sdk_problems(body)
    assert path == ("newer_field",)
