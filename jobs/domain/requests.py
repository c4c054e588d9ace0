"""Jobs, their statuses and the state machine, and the request/response shapes.

    queued -> running -> (requires_action <-> running)
           -> completed | failed | cancelled | incomplete | expired

The upstream status is an open enum: values this code does not know are kept in
``upstream_status`` and treated as still pending.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from jobs.domain.checks import explain, json_value_problems, too_deep


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: AnyHttpUrl
    secret: str | None = Field(
        default=None, description="Standard Webhooks secret, `whsec_` + base64; generated if absent"
    )

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("whsec_"):
            raise ValueError("webhook secret must start with 'whsec_'")
        try:
            key = base64.b64decode(v.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ValueError("webhook secret must be 'whsec_' followed by base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("webhook secret must decode to 24..64 bytes")
        return v


# Bounds on the free-form JSON a caller sends (README.md, "Limits on what a
# request carries"). A value nested some hundreds of levels deep is accepted by
# the JSON parser but cannot be rendered back, so it is refused at intake (422)
# rather than stored.
MAX_METADATA_BYTES = 16_384  # metadata as JSON (json.dumps)
MAX_METADATA_DEPTH = 32  # levels of objects / arrays in metadata
MAX_INTERACTION_DEPTH = 64  # in an interaction body, a continue input
# validation context of a body read as strict JSON (orjson: no NaN, Infinity or
# lone surrogate can be in it), whose values need no check for them
CLEAN = {"clean_json": True}


def _clean(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("clean_json"))


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")
    interaction: dict[str, Any] = Field(
        description="An Interactions API create body (`model` or `agent`, `input`, ...)"
    )
    webhook: WebhookSpec | None = None
    metadata: Any = None
    timeout_s: float | None = Field(default=None, gt=0)
    custom_id: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("interaction")
    @classmethod
    def _check_interaction(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        check_depth(v, MAX_INTERACTION_DEPTH, "interaction")
        return check_interaction_body(v, values_checked=_clean(info))

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, v: Any, info: ValidationInfo) -> Any:
        return check_metadata(v, values_checked=_clean(info))


def check_json_values(v: Any) -> None:
    """No lone surrogates, NaN or Infinity (JSON cannot carry them)."""
    problems = json_value_problems(v)
    if problems:
        raise ValueError(explain(problems))


def check_depth(v: Any, limit: int, what: str) -> None:
    problem = too_deep(v, limit, what)
    if problem:
        raise ValueError(problem)


def check_metadata(v: Any, *, values_checked: bool = False) -> Any:
    """``metadata`` (of a job or a batch): at most ``MAX_METADATA_DEPTH``
    levels deep, values JSON can carry (``values_checked``: known already),
    at most ``MAX_METADATA_BYTES``."""
    check_depth(v, MAX_METADATA_DEPTH, "metadata")
    if not values_checked:
        check_json_values(v)
    if len(json.dumps(v)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return v


def check_interaction_body(
    v: dict[str, Any], *, need_input: bool = True, values_checked: bool = False
) -> dict[str, Any]:
    """interq's own rules for a create body (``values_checked``: its values
    are known to be ones JSON can carry); the SDK's types are checked by
    ``jobs/domain/checks.py`` where the settings are known."""
    if not values_checked:
        check_json_values(v)
    model, agent = v.get("model"), v.get("agent")
    if (model is None) == (agent is None):
        raise ValueError("interaction needs exactly one of 'model' or 'agent'")
    name = model if model is not None else agent
    if not isinstance(name, str) or not name.strip():
        raise ValueError("'model' / 'agent' must be a non-empty string")
    if model is not None and "agent_config" in v:
        raise ValueError("'agent_config' goes with 'agent', not 'model'")
    if agent is not None and "generation_config" in v:
        raise ValueError("'generation_config' goes with 'model', not 'agent'")
    if v.get("store") is False:
        raise ValueError("interq runs interactions in the background, which needs store=true")
    if v.get("background") is False:
        raise ValueError("interq always sets background=true; do not send background=false")
    if "webhook_config" in v:
        raise ValueError("webhook_config is interq's to set (see INTERQ_PUBLIC_URL); use 'webhook'")
    if v.get("stream"):
        raise ValueError("stream is not supported; interq polls the interaction")
    if need_input and v.get("input") in (None, "", []):
        raise ValueError("interaction needs an 'input'")
    return v


class ContinueBody(BaseModel):
    """Body of ``POST /v1/jobs/{id}/continue``: the next user turn for a paused
    interaction, as the API takes it: function results for the pending calls,
    text (an answer to the agent's question, a confirmation of its plan), or
    any other user content or steps."""

    model_config = ConfigDict(extra="forbid")
    input: str | list[dict[str, Any]] = Field(
        description='text, or a list of content objects or steps, e.g. `[{"type": '
        '"function_result", "call_id": ..., "name": ..., "result": ...}]`',
    )

    @field_validator("input")
    @classmethod
    def _check_input(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("input must not be empty")
            return v
        if not v:
            raise ValueError("input must not be empty")
        check_depth(v, MAX_INTERACTION_DEPTH, "input")
        for i, item in enumerate(v):
            if not isinstance(item.get("type"), str) or not item["type"]:
                raise ValueError(f"input[{i}] needs a 'type'")
            if item["type"] != "function_result":
                continue
            if not isinstance(item.get("call_id"), str) or not item["call_id"]:
                raise ValueError(f"input[{i}] needs the 'call_id' of a pending function_call")
            if "result" not in item:
                raise ValueError(f"input[{i}] needs a 'result'")
        return v

    def call_ids(self) -> list[str]:
        """The call ids its function results answer."""
        if isinstance(self.input, str):
            return []
        return [i["call_id"] for i in self.input if i["type"] == "function_result"]


class BatchCreate(BaseModel):
    """JSON body of ``POST /v1/batches`` (or send NDJSON, one job per line)."""

    model_config = ConfigDict(extra="forbid")
    jobs: list[Any] = Field(description="job objects: custom_id, interaction, metadata, ...")
    webhook: WebhookSpec | None = None
    metadata: Any = None

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, v: Any) -> Any:
        return check_metadata(v)
