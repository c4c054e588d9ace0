"""The one builder of a service process's environment from settings.

``env_for(settings_or_overrides, **extra)`` turns a ``Settings`` (every field
that differs from its default, or was set explicitly) or a mapping of field
names to values into the ``INTERQ_*`` / ``GEMINI_API_KEY`` variables
``Settings`` reads back, on top of ``base_env()``: this process's environment
without any ``INTERQ_*`` or ``GEMINI_*`` variable, so nothing leaks in from the
shell. ``extra`` adds raw variables (``INTERQ_STEP_TIMEOUT_S="5"``) last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, SecretStr

from jobs.settings import Settings

__all__ = ["base_env", "encode", "env_for", "env_name"]

PRIVATE_PREFIXES = ("INTERQ_", "GEMINI_")


def base_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without INTERQ_* and GEMINI_* variables."""
    src = os.environ if environ is None else environ
    return {k: v for k, v in src.items() if not k.startswith(PRIVATE_PREFIXES)}


def env_name(field: str) -> str:
    """The variable ``Settings`` reads ``field`` from."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    return "INTERQ_" + field.upper()


def encode(value: Any) -> str | None:
    """A settings value as ``Settings`` parses it from the environment (None: leave unset)."""
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):  # the NoDecode list fields: comma-separated
        return ",".join(str(v) for v in value)
    if isinstance(value, dict | BaseModel):
        return json.dumps(value, default=_plain)
    return str(value)


def _plain(o: Any) -> Any:
    return o.model_dump() if isinstance(o, BaseModel) else str(o)


def _fields_of(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if name in settings.model_fields_set or value != info.get_default(
            call_default_factory=True
        ):
            out[name] = value
    return out


def env_for(
    settings: Settings | Mapping[str, Any] | None = None,
    /,
    *,
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """``base`` (default ``base_env()``) plus the variables for ``settings``
    (a Settings, or ``{field: value}``; keys already in upper case are taken as
    variable names) plus ``extra``."""
    env = dict(base_env() if base is None else base)
    if isinstance(settings, Settings):
        fields: Mapping[str, Any] = _fields_of(settings)
    else:
        fields = settings or {}
    for key, value in fields.items():
        name = key if key.isupper() else env_name(key)
        text = encode(value)
        if text is None:
            env.pop(name, None)
        else:
            env[name] = text
    env.update(extra)
    return env
