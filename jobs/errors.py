"""Every exception class of the ``jobs`` package (the service; the client SDK's
own ``InterqError`` lives in ``jobs/client/common.py`` and is a different
thing: what a *caller* of the API catches).

    Exception
     ├── ApiError                 the caller's fault or a refusal the caller sees;
     │     .http_status .code     rendered by jobs/http/errors.py as
     │     .message .extra        {"error": {"code", "message", **extra}}
     │     .headers               (plus these response headers)
     │     ├── InvalidRequest     422 invalid_request
     │     │     ├── UnsafeURL    422 unsafe_webhook_url (also a ValueError): a
     │     │     │                webhook URL that resolves to a non-public address
     │     │     ├── BatchError   422 invalid_batch, .lines: the invalid lines
     │     │     ├── UnknownCallId  422 unknown_call_id
     │     │     └── IdempotencyKeyReused  422 idempotency_key_reused
     │     ├── InvalidWebhook     400 invalid_webhook: a bad signature or body on
     │     │                      POST /v1/upstream/webhook
     │     ├── Unauthorized       401 unauthorized
     │     ├── NotFound           404 not_found
     │     │     └── NoResult     404 no_result
     │     ├── Conflict           409 illegal_transition
     │     │     └── JobInBatch   409 job_in_batch
     │     ├── TooLarge           413 body_too_large
     │     ├── RateLimited        429 rate_limited (Retry-After)
     │     │     └── TenantDailyTokens  429 tenant_daily_tokens: the tenant used
     │     │                      its INTERQ_TENANT_LIMITS tokens_per_day (Retry-After:
     │     │                      the day's turn, midnight Pacific)
     │     └── Unavailable        503 unavailable (Retry-After)
     ├── UpstreamError            anything that went wrong talking upstream
     │     ├── Retryable          408, 409, 429, 5xx, timeouts, connection errors
     │     │     │ .delay_s       the server's hint (Retry-After, retry-after-ms,
     │     │     │                error.details[].retryDelay), or None
     │     │     │ .maybe_sent    the request may have reached the server and only
     │     │     │                the response was lost: a create may have run
     │     │     └── QuotaExhausted  429 whose QuotaFailure names a per-day quota:
     │     │                      .reset_at (epoch s, next midnight Pacific),
     │     │                      .quota_id; retrying before the reset is useless
     │     └── Rejected           any other 4xx: do not retry
     │           ├── UpstreamNotFound  404 (``jobs.upstream.client.NotFound``)
     │           └── KeyRefused   401, 403: the upstream refused the API key;
     │                            work pauses instead of failing jobs
     ├── SendFailed               an upstream backend got no answer (.kind,
     │                            .maybe_sent); the client makes it Retryable
     ├── ResultNotFound           the result store has no such object
     └── BodyTooLarge             inside the body-limit middleware only: the body
                                  grew past the limit while being read

Only ``ApiError`` reaches the caller as such; the others are caught where
they are met and become an outcome (a retry, a failed job, an ``ApiError``).
This module imports nothing of the package, so anything may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class ApiError(Exception):
    """An error the API answers with ``http_status`` and ``{"error": {...}}``."""

    http_status: ClassVar[int] = 400
    code: ClassVar[str] = "error"

    def __init__(
        self, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class InvalidRequest(ApiError):
    http_status = 422
    code = "invalid_request"


class UnsafeURL(InvalidRequest, ValueError):
    code = "unsafe_webhook_url"


class BatchError(InvalidRequest):
    code = "invalid_batch"

    def __init__(self, message: str, lines: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, lines=lines or [])
        self.lines: list[dict[str, Any]] = self.extra["lines"]


class UnknownCallId(InvalidRequest):
    code = "unknown_call_id"


class IdempotencyKeyReused(InvalidRequest):
    code = "idempotency_key_reused"


class InvalidWebhook(ApiError):
    http_status = 400
    code = "invalid_webhook"


class Unauthorized(ApiError):
    http_status = 401
    code = "unauthorized"


class NotFound(ApiError):
    http_status = 404
    code = "not_found"


class NoResult(NotFound):
    code = "no_result"


class Conflict(ApiError):
    http_status = 409
    code = "illegal_transition"


class JobInBatch(Conflict):
    code = "job_in_batch"


class TooLarge(ApiError):
    http_status = 413
    code = "body_too_large"


class RateLimited(ApiError):
    http_status = 429
    code = "rate_limited"


class TenantDailyTokens(RateLimited):
    code = "tenant_daily_tokens"


class Unavailable(ApiError):
    http_status = 503
    code = "unavailable"


class UpstreamError(Exception):
    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class Retryable(UpstreamError):
    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        delay_s: float | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.delay_s = delay_s
        self.maybe_sent = maybe_sent


class QuotaExhausted(Retryable):
    """A 429 whose ``QuotaFailure`` names a per-day quota: it clears at the
    daily reset (``reset_at``, epoch seconds), not after a retry delay."""

    def __init__(
        self,
        message: str,
        *,
        reset_at: float,
        quota_id: str = "",
        status_code: int | None = 429,
        delay_s: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, delay_s=delay_s)
        self.reset_at = reset_at
        self.quota_id = quota_id


class Rejected(UpstreamError):
    pass


class KeyRefused(Rejected):
    """401 or 403: the upstream refused the API key (revoked, rotated,
    missing). Not the job's fault: work pauses until a call succeeds."""


class UpstreamNotFound(Rejected):
    pass


class SendFailed(Exception):
    """No answer: ``kind`` is connect_error (surely not sent), timeout or
    transport_error (``maybe_sent``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.maybe_sent = kind != "connect_error"


class ResultNotFound(Exception):
    pass


class BodyTooLarge(Exception):
    pass
