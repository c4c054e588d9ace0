"""The asyncio :class:`AsyncClient`, the twin of :class:`Client`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx

from jobs.client.common import (
    _CHUNK,
    DEFAULT_URL,
    JOB_TERMINAL,
    JSON,
    BatchJobs,
    Webhook,
    _batch_headers,
    _check_deadline,
    _deadline,
    _error_from,
    _headers,
    _job_body,
    _json_body,
    _ndjson_lines,
    _result_line,
    _wait_params,
    _with_secret,
    batch_settled,
)

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
        """As :meth:`Client.wait`: each GET waits for the next change (``?wait=``)."""
        deadline, seen = _deadline(timeout), None
        while True:
            params: dict[str, float] = _wait_params(deadline) if seen is not None else {}
            job = await self._get_waiting(f"/v1/jobs/{job_id}", params)
            status = job.get("status")
            if status in JOB_TERMINAL or (stop_on_action and status == "requires_action"):
                return job
            _check_deadline(deadline, f"job {job_id} still {status}", timeout)
            if status == seen:
                await asyncio.sleep(poll_interval)
            seen = status

    async def _get_waiting(self, path: str, params: dict[str, float]) -> JSON:
        wait = params.get("wait", 0.0)
        return _json_body(await self._http.get(path, params=params, timeout=wait + 30))

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
        headers = _batch_headers(webhook, metadata)
        if isinstance(jobs, str | os.PathLike):
            path = Path(jobs)
            headers["Content-Length"] = str((await anyio.Path(path).stat()).st_size)
            resp = await self._http.post("/v1/batches", content=_file_chunks(path), headers=headers)
        else:
            lines = _aiter_bytes(_ndjson_lines(jobs))
            resp = await self._http.post("/v1/batches", content=lines, headers=headers)
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
        """As :meth:`Client.wait_batch` (``?wait=`` without ``on_update``)."""
        deadline, seen = _deadline(timeout), None
        while True:
            params: dict[str, float] = {}
            if seen is not None and on_update is None:
                params = _wait_params(deadline)
            view = await self._get_waiting(f"/v1/batches/{batch_id}", params)
            if on_update is not None:
                on_update(view)
            if batch_settled(view):
                return view
            _check_deadline(
                deadline, f"batch {batch_id} at {view.get('done')}/{view.get('total')}", timeout
            )
            if on_update is not None or view.get("status") == seen:
                await asyncio.sleep(poll_interval)
            seen = view.get("status")

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

    async def rerun(
        self, target: str, statuses: list[str] | None = None, key: str | None = None
    ) -> JSON:
        """Rerun a job (``job_...``) or a batch's lines in ``statuses``
        (default failed and expired). ``key``: an Idempotency-Key."""
        headers = {"Idempotency-Key": key} if key else {}
        kind = "jobs" if target.startswith("job_") else "batches"
        params = {"status": statuses} if statuses else None
        url = f"/v1/{kind}/{target}/rerun"
        return _json_body(await self._http.post(url, params=params, headers=headers))
