"""Wire shapes the simulator shares: the outcome and output vocabularies,
google.rpc-style errors with RetryInfo, timestamps and fresh ids."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

OUTCOMES = (
    "completed failed cancelled incomplete budget_exceeded requires_action requires_continuation"
    " cancel404 never unknown not_found_first queued idle"
).split()
OUTPUTS = ("text", "json", "image", "audio")
# ``[sim shape=...]``: the harder step shapes, each with the outcome it implies
# (None: the directive's own outcome); see scenarios.SHAPE_BUILDERS.
SHAPE_OUTCOMES: dict[str, str | None] = {
    "tool_boundary": "completed",  # text, a server tool call and result, more text
    "tool_then_call": "requires_action",  # text, a server tool, text, a function call
    "image_barrier": "completed",  # text around images: [X, image] then [Y, image, Z]
    "multi_round": "requires_action",  # MULTI_ROUNDS function-call rounds, then an answer
    "parallel_calls": "requires_action",  # several function calls in one pause
    "question": "requires_action",  # a pause with no function call: the agent asks
    "error_list": "failed",  # errors[] of several objects with URI codes, partial text
    "error_status": "failed",  # a google.rpc Status step error; errors[] string codes
    "slow_cancel": None,  # after a cancel, SLOW_CANCEL_POLLS more polls say "in_progress"
}
SHAPES = tuple(SHAPE_OUTCOMES)
MULTI_ROUNDS = 3
SLOW_CANCEL_POLLS = 2
TERMINAL = {"completed", "failed", "cancelled", "incomplete", "budget_exceeded"}
PENDING = {"queued", "in_progress", "idle", "paused_for_review"}
CONTENT_TYPES = {"text", "image", "audio", "video", "document"}
# 1x1 RGB PNG and an 8-sample 16-bit mono WAV, both valid files.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)
WAV_B64 = "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA"
ERR_URI = "https://generativelanguage.googleapis.com/errors/internal"
QUOTA_FAILURE = {
    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
    "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests"}],
}
QUOTA_FAILURE_PER_DAY = {
    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
    "violations": [
        {
            "quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model_per_day",
            "quotaId": "GenerateRequestsPerDayPerProjectPerModel",
        }
    ],
}
ERROR_STYLES = frozenset({"object", "list", "string_code"})
GRPC = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or GRPC[code]


def error_body(
    code: int, message: str, status: str | None = None, details: list[JSON] | None = None
) -> JSON:
    err: JSON = {"code": code, "message": message, "status": status or GRPC[code]}
    if details is not None:
        err["details"] = details
    return {"error": err}


def retry_delay_str(seconds: float) -> str:
    """Format like google.protobuf.Duration JSON (``"1.5s"``)."""
    return f"{max(seconds, 0.0):.9f}".rstrip("0").rstrip(".") + "s"


def retry_info(seconds: float) -> JSON:
    return {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": retry_delay_str(seconds),
    }


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def new_id(prefix: str, nbytes: int = 18) -> str:
    """A fresh id, drawn at random, never from the seed: ids never repeat
    across restarts."""
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode().rstrip("=")


def styled(body: Any, style: str) -> Any:
    """An error body as ``SimConfig.error_style`` says: as built, wrapped in a
    list, or with the SDK schema's string code (its gRPC status, lower case)."""
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        return body
    if style == "list":
        return [body]
    if style == "string_code":
        err = dict(body["error"])
        err["code"] = str(err.get("status") or err.get("code")).lower()
        return {"error": err}
    return body
