"""What the sync and async clients share: errors, request bodies, parsing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

JSON = dict[str, Any]
DEFAULT_URL = "http://127.0.0.1:8000"
JOB_TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete", "expired"})
NDJSON = "application/x-ndjson"
_CHUNK = 65_536

Webhook = str | Mapping[str, Any]
"""A webhook: a URL, or ``{"url": ..., "secret": "whsec_..."}``."""
BatchJobs = Iterable[Mapping[str, Any]] | str | os.PathLike[str]
"""Batch input: job objects (``custom_id``, ``interaction``, ...) or the path of
an NDJSON file holding one per line."""


class InterqError(Exception):
    """An error response from the API (``{"error": {"code", "message"}}``).

    ``lines`` holds the per-line errors of a refused batch,
    ``[{"line": 17, "error": "..."}]`` (1-based); ``body`` the whole error object.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        lines: list[JSON] | None = None,
        body: JSON | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.lines = lines
        self.body = body or {}


ENDED = frozenset({"completed", "cancelled"})  # a batch's final statuses


def batch_finished(batch: Mapping[str, Any]) -> bool:
    """True once a batch has ended (``completed`` or ``cancelled``). Its status
    changes just after its last job ends, so ``done == total`` may be seen a
    moment earlier; the final usage and ``finished_at`` come with the status.
    A ``paused`` batch has not ended: it waits for a resume or a cancel."""
    return batch.get("status") in ENDED


def batch_settled(batch: Mapping[str, Any]) -> bool:
    """Ended, or paused (``pause_error`` says why: its first jobs were refused
    alike, and nothing more runs until someone resumes or cancels it; or its
    tenant is held for its daily tokens until ``retry_at``): where
    ``wait_batch`` returns."""
    return batch_finished(batch) or batch.get("status") == "paused"


# --------------------------------------------------------------------------- shared


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"User-Agent": "interq-client/0.1", "Accept": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def _error_from(resp: httpx.Response, raw: bytes) -> InterqError:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err: JSON = doc["error"]
        lines = err.get("lines")
        return InterqError(
            resp.status_code,
            str(err.get("code") or "error"),
            str(err.get("message") or resp.reason_phrase),
            lines=lines if isinstance(lines, list) else None,
            body=err,
        )
    text = raw.decode("utf-8", "replace").strip()
    message = text[:200] if text else resp.reason_phrase or "no message"
    return InterqError(resp.status_code, f"http_{resp.status_code}", message)


def _json_body(resp: httpx.Response) -> JSON:
    if resp.is_error:
        raise _error_from(resp, resp.content)
    try:
        doc = resp.json()
    except ValueError:
        raise InterqError(
            resp.status_code, "bad_response", f"expected JSON from {resp.request.url}"
        ) from None
    if not isinstance(doc, dict):
        raise InterqError(resp.status_code, "bad_response", "expected a JSON object")
    return doc


def _with_secret(resp: httpx.Response, view: JSON) -> JSON:
    """interq returns a generated webhook secret once, in a header; keep it."""
    secret = resp.headers.get("X-Webhook-Secret")
    if secret:
        view = {**view, "webhook_secret": secret}
    return view


def _webhook_obj(webhook: Webhook | None) -> JSON | None:
    if webhook is None:
        return None
    if isinstance(webhook, str):
        return {"url": webhook}
    return dict(webhook)


def _job_body(
    interaction: Mapping[str, Any],
    webhook: Webhook | None,
    metadata: Any,
    custom_id: str | None,
    timeout_s: float | None,
) -> JSON:
    body: JSON = {"interaction": dict(interaction)}
    hook = _webhook_obj(webhook)
    if hook is not None:
        body["webhook"] = hook
    if metadata is not None:
        body["metadata"] = metadata
    if custom_id is not None:
        body["custom_id"] = custom_id
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    return body


def _batch_headers(webhook: Webhook | None, metadata: Any = None) -> dict[str, str]:
    """An NDJSON batch's headers: its webhook, and its metadata as JSON
    (ASCII: non-ASCII characters escaped, as a header must be)."""
    hook = _webhook_obj(webhook)
    headers = {"Content-Type": NDJSON}
    if metadata is not None:
        headers["X-Batch-Metadata"] = json.dumps(metadata, separators=(",", ":"))
    if hook is not None:
        headers["X-Webhook-Url"] = str(hook["url"])
        if hook.get("secret"):
            headers["X-Webhook-Secret"] = str(hook["secret"])
    return headers


def _ndjson_lines(jobs: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    for job in jobs:
        yield json.dumps(job, separators=(",", ":")).encode() + b"\n"


def _result_line(raw: str) -> JSON | None:
    if not raw.strip():
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InterqError(
            200, "bad_response", f"a results line is not JSON: {raw[:80]!r}"
        ) from None
    if not isinstance(doc, dict):
        raise InterqError(200, "bad_response", "a results line is not a JSON object")
    return doc


LONG_POLL_S = 30.0  # the ?wait= of a waiting GET (the API answers on a change)


def _wait_params(deadline: float | None) -> dict[str, float]:
    """``?wait=``: at most ``LONG_POLL_S``, and not past ``deadline``."""
    left = LONG_POLL_S if deadline is None else deadline - time.monotonic()
    return {"wait": round(max(0.0, min(LONG_POLL_S, left)), 3)}


def _merge_event(view: dict[str, Any], kind: str, data: Any) -> None:
    """Fold one SSE event of a job or batch stream into the view so far."""
    if not isinstance(data, dict):
        return
    if kind in ("job", "batch"):
        view.clear()
        view.update(data)
    elif kind == "counts":
        view.update(data)
    elif kind == "status":
        view["status"] = data.get("status")


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _check_deadline(deadline: float | None, what: str, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"{what} after {timeout} s")
