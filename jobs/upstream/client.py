"""httpx client for the Gemini Interactions API. Its errors (``UpstreamError``,
``Retryable``, ``Rejected``, ``NotFound``) are defined in ``jobs/errors.py`` and
re-exported here, the names the worker steps catch.

No call here retries by itself: the worker steps decide, because a create must
not be re-sent blindly (the API has no idempotency key).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
import time
import zoneinfo
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from jobs.errors import KeyRefused, QuotaExhausted, Rejected, Retryable, SendFailed, UpstreamError
from jobs.errors import UpstreamNotFound as NotFound
from jobs.observe import metrics
from jobs.settings import Settings
from jobs.upstream.backends import AiohttpBackend, Answer, Backend, HttpxBackend

API_REVISION = "2026-05-20"
# as the SDK retries: 408, 409, 429, 5xx
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
KEY_REFUSED_STATUS = frozenset({401, 403})
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_PER_DAY = re.compile(r"per[_-]?day|daily|_rpd\b|\brpd\b", re.IGNORECASE)
__all__ = [
    "KeyRefused",
    "NotFound",
    "QuotaExhausted",
    "Rejected",
    "Retryable",
    "UpstreamClient",
    "UpstreamError",
]


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s*$")


def parse_error_body(body: Any) -> tuple[str, float | None]:
    """Message and retry delay from a Google error body: an object or a list
    of objects, ``code`` int or string, ``details[].retryDelay`` like "45.8s"."""
    if isinstance(body, list) and body:
        body = body[0]
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", None
    message = str(err.get("message") or err.get("status") or "")
    delay = None
    for d in err.get("details") or []:
        if isinstance(d, dict) and isinstance(d.get("retryDelay"), str):
            m = _DURATION.match(d["retryDelay"])
            if m:
                delay = float(m.group(1))
    return message, delay


def per_day_quota(body: Any) -> str | None:
    """The quotaId (or quotaMetric) of a ``QuotaFailure`` violation that names
    a per-day limit ("GenerateRequestsPerDayPerProjectPerModel"), else None."""
    if isinstance(body, list) and body:
        body = body[0]
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    for d in details if isinstance(details, list) else []:
        if not isinstance(d, dict) or d.get("@type") != QUOTA_FAILURE:
            continue
        for v in d.get("violations") or []:
            if not isinstance(v, dict):
                continue
            for field in ("quotaId", "quotaMetric"):
                name = v.get(field)
                if isinstance(name, str) and _PER_DAY.search(name):
                    return str(v.get("quotaId") or name)
    return None


def pacific() -> dt.tzinfo:
    """America/Los_Angeles; without tz data, UTC-8 (PST), which puts the
    reset at or after the real one, never before."""
    try:
        return zoneinfo.ZoneInfo("America/Los_Angeles")
    except zoneinfo.ZoneInfoNotFoundError:
        return dt.timezone(dt.timedelta(hours=-8))


def daily_reset(now: float) -> float:
    """The next midnight in America/Los_Angeles after ``now`` (epoch s):
    when per-day quotas reset."""
    tz = pacific()
    local = dt.datetime.fromtimestamp(now, tz)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return midnight.timestamp()


def parse_retry_headers(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(ra)
            except (TypeError, ValueError):
                return None
            return max(0.0, parsed.timestamp() - time.time())
    return None


def error_from_answer(ans: Answer) -> UpstreamError:
    try:
        body = json.loads(ans.body)
    except ValueError:
        body = None
    message, body_delay = parse_error_body(body)
    code = ans.status
    message = message or f"HTTP {code}"
    if code in RETRYABLE_STATUS:
        delay = parse_retry_headers(ans.headers)
        delay = delay if delay is not None else body_delay
        quota = per_day_quota(body) if code == 429 else None
        if quota is not None:
            return QuotaExhausted(
                message, reset_at=daily_reset(time.time()), quota_id=quota, delay_s=delay
            )
        return Retryable(message, status_code=code, delay_s=delay)
    if code in KEY_REFUSED_STATUS:
        return KeyRefused(message, status_code=code)
    if code == 404:
        return NotFound(message, status_code=code)
    return Rejected(message, status_code=code)


class UpstreamClient:
    """The Interactions API: create, get, cancel, delete. Each call is sent
    once; errors come back as the tree above."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        headers = {"Api-Revision": API_REVISION, "Accept": "application/json"}
        if settings.gemini_api_key is not None:
            headers["x-goog-api-key"] = settings.gemini_api_key.get_secret_value()
        self.base = f"{settings.upstream_url}/{settings.upstream_api_version}/interactions"
        self.create_timeout_s = settings.create_timeout_s
        self.backend: Backend
        if transport is not None:
            self.backend = HttpxBackend(headers, settings.upstream_timeout_s, transport)
        else:
            # a kept-alive connection per request in flight: submit slots + polls
            conns = settings.worker_max_jobs + settings.poll_concurrency
            self.backend = AiohttpBackend(headers, settings.upstream_timeout_s, conns)

    async def aclose(self) -> None:
        await self.backend.aclose()

    def _url(self, interaction_id: str, suffix: str = "") -> str:
        return f"{self.base}/{quote(interaction_id, safe='')}{suffix}"

    async def _call(
        self, op: str, method: str, url: str, *, body: Any = None, timeout_s: float | None = None
    ) -> Any:
        start = time.perf_counter()
        code = "error"
        try:
            ans = await self.backend.send(method, url, json=body, timeout_s=timeout_s)
            code = str(ans.status)
        except SendFailed as e:
            code = e.kind
            raise Retryable(e.message, maybe_sent=e.maybe_sent) from None
        finally:
            metrics.UPSTREAM_REQUESTS.labels(op=op, code=code).inc()
            metrics.UPSTREAM_LATENCY.labels(op=op).observe(time.perf_counter() - start)
        if ans.status >= 400:
            raise error_from_answer(ans)
        try:
            return json.loads(ans.body)
        except ValueError:
            raise Retryable(
                "upstream sent a body that is not JSON", status_code=ans.status
            ) from None

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._call(
            "create", "POST", self.base, body=body, timeout_s=self.create_timeout_s
        )
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise Retryable("create answered without an interaction id", maybe_sent=True)
        return data

    async def get(self, interaction_id: str) -> dict[str, Any]:
        data = await self._call("get", "GET", self._url(interaction_id) + "?stream=false")
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise Retryable("get answered without a status")
        return data

    async def cancel(self, interaction_id: str) -> dict[str, Any]:
        data = await self._call("cancel", "POST", self._url(interaction_id, "/cancel"))
        return data if isinstance(data, dict) else {}

    async def delete(self, interaction_id: str) -> None:
        await self._call("delete", "DELETE", self._url(interaction_id))
