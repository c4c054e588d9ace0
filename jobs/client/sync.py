"""The synchronous :class:`Client`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from jobs.client.common import (
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
    _merge_event,
    _ndjson_lines,
    _result_line,
    _wait_params,
    _with_secret,
    batch_settled,
)

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
        """Wait until the job is terminal (or ``requires_action``, unless
        ``stop_on_action=False``); raises ``TimeoutError`` after ``timeout`` s.
        Each GET waits for the next change (``?wait=``); ``poll_interval`` is
        the pause after an answer that brought none (an API without ``?wait=``)."""
        deadline, seen = _deadline(timeout), None
        while True:
            params: dict[str, float] = _wait_params(deadline) if seen is not None else {}
            job = self._get_waiting(f"/v1/jobs/{job_id}", params)
            status = job.get("status")
            if status in JOB_TERMINAL or (stop_on_action and status == "requires_action"):
                return job
            _check_deadline(deadline, f"job {job_id} still {status}", timeout)
            if status == seen:
                time.sleep(poll_interval)
            seen = status

    def _get_waiting(self, path: str, params: dict[str, float]) -> JSON:
        wait = params.get("wait", 0.0)
        return _json_body(self._http.get(path, params=params, timeout=wait + 30))

    def events(
        self, path: str, last_event_id: str | None = None
    ) -> Iterator[tuple[str, JSON, str]]:
        """A job's or batch's Server-Sent Events (``/v1/jobs/{id}/events``,
        ``/v1/batches/{id}/events``): (event, data, id) until the stream ends."""
        from httpx_sse import connect_sse

        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with connect_sse(self._http, "GET", path, headers=headers) as source:
            if source.response.is_error:
                source.response.read()
                raise _error_from(source.response, source.response.content)
            for ev in source.iter_sse():
                if ev.data:  # a heartbeat comment comes as an event without data
                    yield ev.event, ev.json(), ev.id

    def watch_batch(self, batch_id: str, last_event_id: str | None = None) -> Iterator[JSON]:
        """The batch's view each time it changes (status, counts), from its
        event stream, until it ends; each item also carries ``last_event_id``."""
        view: dict[str, Any] = {}
        for kind, data, eid in self.events(f"/v1/batches/{batch_id}/events", last_event_id):
            _merge_event(view, kind, data)
            yield {**view, "last_event_id": eid}

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
        are the ones a 422 reports); job dicts are encoded one per line. The
        batch's ``webhook`` and ``metadata`` travel in headers."""
        headers = _batch_headers(webhook, metadata)
        if isinstance(jobs, str | os.PathLike):
            with Path(jobs).open("rb") as f:  # httpx sends it with its Content-Length
                resp = self._http.post("/v1/batches", content=f, headers=headers)
        else:
            resp = self._http.post("/v1/batches", content=_ndjson_lines(jobs), headers=headers)
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
        """Wait until the batch has ended, or paused (``"status": "paused"``,
        ``pause_error`` says why: see ``batch_settled``), and return its view.
        ``on_update`` sees each view (then it polls every ``poll_interval``;
        without, each GET waits for the batch's next change of status,
        ``?wait=``)."""
        deadline, seen = _deadline(timeout), None
        while True:
            params: dict[str, float] = {}
            if seen is not None and on_update is None:
                params = _wait_params(deadline)
            view = self._get_waiting(f"/v1/batches/{batch_id}", params)
            if on_update is not None:
                on_update(view)
            if batch_settled(view):
                return view
            _check_deadline(
                deadline, f"batch {batch_id} at {view.get('done')}/{view.get('total')}", timeout
            )
            if on_update is not None or view.get("status") == seen:
                time.sleep(poll_interval)
            seen = view.get("status")

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

    def rerun(self, target: str, statuses: list[str] | None = None, key: str | None = None) -> JSON:
        """Rerun a job (``job_...``) or a batch's lines in ``statuses``
        (default failed and expired). ``key``: an Idempotency-Key."""
        headers = {"Idempotency-Key": key} if key else {}
        kind = "jobs" if target.startswith("job_") else "batches"
        params = {"status": statuses} if statuses else None
        url = f"/v1/{kind}/{target}/rerun"
        return _json_body(self._http.post(url, params=params, headers=headers))
