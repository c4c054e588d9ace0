"""A small client for the interq HTTP API, for scripts and notebooks.

    from jobs.client import Client

    with Client("http://127.0.0.1:8000") as iq:
        job = iq.submit({"model": "gemini-3.5-flash", "input": "Write a haiku"})
        done = iq.wait(job["id"])
        print(done["status"], done["output_text"])

        batch = iq.submit_batch("examples/batch.jsonl")  # streamed from the file
        iq.wait_batch(batch["id"])
        for line in iq.iter_results(batch["id"]):
            print(line["custom_id"], line["status"])

:class:`AsyncClient` has the same methods, as coroutines (``iter_results`` is an
async iterator). Every error response raises :class:`InterqError`; network
failures surface as ``httpx.TransportError``. Responses are returned as the
API's JSON, as plain dicts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx

__all__ = [
    "DEFAULT_URL",
    "JOB_TERMINAL",
    "AsyncClient",
    "BatchJobs",
    "Client",
    "InterqError",
    "Webhook",
    "batch_finished",
]

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


def batch_finished(batch: Mapping[str, Any]) -> bool:
    """True once a batch has ended (``completed`` or ``cancelled``). Its status
    changes just after its last job ends, so ``done == total`` may be seen a
    moment earlier; the final usage and ``finished_at`` come with the status."""
    return bool(batch.get("status", "in_progress") != "in_progress")


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


def _batch_headers(webhook: Webhook | None) -> dict[str, str]:
    hook = _webhook_obj(webhook)
    headers = {"Content-Type": NDJSON}
    if hook is not None:
        headers["X-Webhook-Url"] = str(hook["url"])
        if hook.get("secret"):
            headers["X-Webhook-Secret"] = str(hook["secret"])
    return headers


def _ndjson_lines(jobs: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    for job in jobs:
        yield json.dumps(job, separators=(",", ":")).encode() + b"\n"


def _read_jobs_file(path: Path) -> list[JSON]:
    """An NDJSON file as a list (only for a JSON-body batch, i.e. with metadata)."""
    out: list[JSON] = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                out.append(json.loads(raw))
            except ValueError as e:
                raise ValueError(f"{path}, line {n}: not JSON ({e})") from None
    return out


def _json_batch(jobs: BatchJobs, webhook: Webhook | None, metadata: Any) -> JSON:
    if isinstance(jobs, str | os.PathLike):
        items = _read_jobs_file(Path(jobs))
    else:
        items = [dict(j) for j in jobs]
    body: JSON = {"jobs": items, "metadata": metadata}
    hook = _webhook_obj(webhook)
    if hook is not None:
        body["webhook"] = hook
    return body


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


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _check_deadline(deadline: float | None, what: str, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"{what} after {timeout} s")


# --------------------------------------------------------------------------- sync


class Client:
    """Synchronous client. ``transport`` is passed to ``httpx.Client`` (tests:
    ``httpx.MockTransport`` or ``httpx.WSGITransport``); use :class:`AsyncClient`
    with ``httpx.ASGITransport``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----------------------------------------------------------------- jobs

    def submit(
        self,
        interaction: Mapping[str, Any],
        *,
        webhook: Webhook | None = None,
        metadata: Any = None,
        custom_id: str | None = None,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Submit one job; returns the job (plus ``webhook_secret`` if interq made one)."""
        body = _job_body(interaction, webhook, metadata, custom_id, timeout_s)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        resp = self._http.post("/v1/jobs", json=body, headers=headers)
        return _with_secret(resp, _json_body(resp))

    def get(self, job_id: str) -> JSON:
        return _json_body(self._http.get(f"/v1/jobs/{job_id}"))

    def jobs(
        self, *, status: str | None = None, limit: int = 100, cursor: int | None = None
    ) -> JSON:
        """One page of the tenant's jobs, newest first: ``{"data": [...], "next_cursor"}``."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor is not None:
            params["cursor"] = cursor
        return _json_body(self._http.get("/v1/jobs", params=params))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        stop_on_action: bool = True,
    ) -> JSON:
        """Poll until the job is terminal (or ``requires_action``, unless
        ``stop_on_action=False``); raises ``TimeoutError`` after ``timeout`` s."""
        deadline = _deadline(timeout)
        while True:
            job = self.get(job_id)
            status = job.get("status")
            if status in JOB_TERMINAL or (stop_on_action and status == "requires_action"):
                return job
            _check_deadline(deadline, f"job {job_id} still {status}", timeout)
            time.sleep(poll_interval)

    def result(self, job_id: str) -> JSON:
        """The stored Interaction of a finished job."""
        return _json_body(self._http.get(f"/v1/jobs/{job_id}/result"))

    def cancel(self, job_id: str) -> JSON:
        return _json_body(self._http.post(f"/v1/jobs/{job_id}/cancel"))

    def continue_job(self, job_id: str, results: list[Mapping[str, Any]]) -> JSON:
        """Answer a ``requires_action`` job with ``function_result`` items."""
        body = {"input": [dict(r) for r in results]}
        return _json_body(self._http.post(f"/v1/jobs/{job_id}/continue", json=body))

    # ----------------------------------------------------------------- batches

    def submit_batch(
        self, jobs: BatchJobs, *, webhook: Webhook | None = None, metadata: Any = None
    ) -> JSON:
        """Submit a batch as NDJSON: a file path is streamed as is (its line numbers
        are the ones a 422 reports); job dicts are encoded one per line. With
        ``metadata`` the batch goes as one JSON body instead (NDJSON has no place
        for it): a file is then read whole, blank lines skipped, and a 422's
        ``lines`` count jobs rather than file lines."""
        if metadata is not None:
            body = _json_batch(jobs, webhook, metadata)
            resp = self._http.post("/v1/batches", json=body)
        elif isinstance(jobs, str | os.PathLike):
            with Path(jobs).open("rb") as f:  # httpx sends it with its Content-Length
                resp = self._http.post("/v1/batches", content=f, headers=_batch_headers(webhook))
        else:
            lines = _ndjson_lines(jobs)
            resp = self._http.post("/v1/batches", content=lines, headers=_batch_headers(webhook))
        return _with_secret(resp, _json_body(resp))

    def batch(self, batch_id: str) -> JSON:
        return _json_body(self._http.get(f"/v1/batches/{batch_id}"))

    def wait_batch(
        self,
        batch_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_update: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Poll until the batch has ended; ``on_update`` sees each view."""
        deadline = _deadline(timeout)
        while True:
            view = self.batch(batch_id)
            if on_update is not None:
                on_update(view)
            if batch_finished(view):
                return view
            _check_deadline(
                deadline, f"batch {batch_id} at {view.get('done')}/{view.get('total')}", timeout
            )
            time.sleep(poll_interval)

    def iter_results(self, batch_id: str) -> Iterator[JSON]:
        """The batch's results, one dict per job in input order, streamed."""
        with self._http.stream("GET", f"/v1/batches/{batch_id}/results") as resp:
            if resp.is_error:
                raise _error_from(resp, resp.read())
            for raw in resp.iter_lines():
                line = _result_line(raw)
                if line is not None:
                    yield line

    def cancel_batch(self, batch_id: str) -> JSON:
        return _json_body(self._http.post(f"/v1/batches/{batch_id}/cancel"))


# --------------------------------------------------------------------------- async


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as f:
        while chunk := await f.read(_CHUNK):
            yield chunk


async def _aiter_bytes(lines: Iterator[bytes]) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


class AsyncClient:
    """The :class:`Client` twin for asyncio; ``transport`` may be an
    ``httpx.ASGITransport`` around the interq app."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- jobs

    async def submit(
        self,
        interaction: Mapping[str, Any],
        *,
        webhook: Webhook | None = None,
        metadata: Any = None,
        custom_id: str | None = None,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        body = _job_body(interaction, webhook, metadata, custom_id, timeout_s)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        resp = await self._http.post("/v1/jobs", json=body, headers=headers)
        return _with_secret(resp, _json_body(resp))

    async def get(self, job_id: str) -> JSON:
        return _json_body(await self._http.get(f"/v1/jobs/{job_id}"))

    async def jobs(
        self, *, status: str | None = None, limit: int = 100, cursor: int | None = None
    ) -> JSON:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor is not None:
            params["cursor"] = cursor
        return _json_body(await self._http.get("/v1/jobs", params=params))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the same signature as Client's)
        poll_interval: float = 1.0,
        stop_on_action: bool = True,
    ) -> JSON:
        deadline = _deadline(timeout)
        while True:
            job = await self.get(job_id)
            status = job.get("status")
            if status in JOB_TERMINAL or (stop_on_action and status == "requires_action"):
                return job
            _check_deadline(deadline, f"job {job_id} still {status}", timeout)
            await asyncio.sleep(poll_interval)

    async def result(self, job_id: str) -> JSON:
        return _json_body(await self._http.get(f"/v1/jobs/{job_id}/result"))

    async def cancel(self, job_id: str) -> JSON:
        return _json_body(await self._http.post(f"/v1/jobs/{job_id}/cancel"))

    async def continue_job(self, job_id: str, results: list[Mapping[str, Any]]) -> JSON:
        body = {"input": [dict(r) for r in results]}
        return _json_body(await self._http.post(f"/v1/jobs/{job_id}/continue", json=body))

    # ----------------------------------------------------------------- batches

    async def submit_batch(
        self, jobs: BatchJobs, *, webhook: Webhook | None = None, metadata: Any = None
    ) -> JSON:
        if metadata is not None:
            body = await asyncio.to_thread(_json_batch, jobs, webhook, metadata)
            resp = await self._http.post("/v1/batches", json=body)
        elif isinstance(jobs, str | os.PathLike):
            path = Path(jobs)
            headers = _batch_headers(webhook)
            headers["Content-Length"] = str((await anyio.Path(path).stat()).st_size)
            resp = await self._http.post("/v1/batches", content=_file_chunks(path), headers=headers)
        else:
            lines = _aiter_bytes(_ndjson_lines(jobs))
            resp = await self._http.post(
                "/v1/batches", content=lines, headers=_batch_headers(webhook)
            )
        return _with_secret(resp, _json_body(resp))

    async def batch(self, batch_id: str) -> JSON:
        return _json_body(await self._http.get(f"/v1/batches/{batch_id}"))

    async def wait_batch(
        self,
        batch_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the same signature as Client's)
        poll_interval: float = 1.0,
        on_update: Callable[[JSON], None] | None = None,
    ) -> JSON:
        deadline = _deadline(timeout)
        while True:
            view = await self.batch(batch_id)
            if on_update is not None:
                on_update(view)
            if batch_finished(view):
                return view
            _check_deadline(
                deadline, f"batch {batch_id} at {view.get('done')}/{view.get('total')}", timeout
            )
            await asyncio.sleep(poll_interval)

    async def iter_results(self, batch_id: str) -> AsyncIterator[JSON]:
        async with self._http.stream("GET", f"/v1/batches/{batch_id}/results") as resp:
            if resp.is_error:
                raise _error_from(resp, await resp.aread())
            async for raw in resp.aiter_lines():
                line = _result_line(raw)
                if line is not None:
                    yield line

    async def cancel_batch(self, batch_id: str) -> JSON:
        return _json_body(await self._http.post(f"/v1/batches/{batch_id}/cancel"))
