"""A job's token usage over every interaction it took (a job continued after
``requires_action``, or after ``requires_continuation``, is several
interactions upstream, each with its own ``usage``).

``total`` sums them the way the fields add up: every integer field, and the
per-modality (``*_by_modality``: ``{modality, tokens}``) and per-tool
(``grounding_tool_count``: ``{type, count}``) lists by their key, except
``initial_input_tokens``, which is the first hop's (its
``total_input_tokens`` when it has none), as the SDK's own merge of
continuation hops does (``_merge_usages`` in
``google/genai/_interactions_continuation.py``). A job of one interaction
reports that interaction's usage unchanged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# list fields of ``usage``: the key that names an entry, the field that counts
KEYED_LISTS = {"grounding_tool_count": ("type", "count")}
BY_MODALITY = ("modality", "tokens")
INITIAL = "initial_input_tokens"  # the turn's own input: the first hop's, not a sum


def total(usages: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The sum of the hops' usages (``None`` when no hop reported any)."""
    present = [u for u in usages if isinstance(u, dict)]
    if len(present) <= 1:
        return dict(present[0]) if present else None
    out: dict[str, Any] = {}
    for u in present:
        for field, value in u.items():
            if field != INITIAL:
                out[field] = _add(field, out.get(field), value)
    first, last = present[0], present[-1]
    initial = first.get(INITIAL)
    if initial is None:
        initial = first.get("total_input_tokens")
    if initial is not None or last.get(INITIAL) is not None:
        out[INITIAL] = initial
    return out


def _add(field: str, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        key, count = KEYED_LISTS.get(field, BY_MODALITY)
        return _merge_keyed(a, b, key, count)
    return b  # anything else: the latest hop's value


def _merge_keyed(a: list[Any], b: list[Any], key: str, count: str) -> list[Any]:
    merged: dict[Any, dict[str, Any]] = {}
    for entry in [*a, *b]:
        if not isinstance(entry, dict):
            continue
        k = entry.get(key)
        if k not in merged:
            merged[k] = dict(entry)
        elif isinstance(entry.get(count), int):
            merged[k][count] = int(merged[k].get(count) or 0) + entry[count]
    return list(merged.values())
