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

from jobs.client.aio import AsyncClient
from jobs.client.common import (
    DEFAULT_URL,
    JOB_TERMINAL,
    BatchJobs,
    InterqError,
    Webhook,
    batch_finished,
    batch_settled,
)
from jobs.client.sync import Client

__all__ = [
    "DEFAULT_URL",
    "JOB_TERMINAL",
    "AsyncClient",
    "BatchJobs",
    "Client",
    "InterqError",
    "Webhook",
    "batch_finished",
    "batch_settled",
]
