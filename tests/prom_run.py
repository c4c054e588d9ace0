"""The small mixed run that tests/test_prometheus.py scrapes: what it submits
and how it waits for all of it to end."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from jobs.delivery.signing import generate_secret
from tests.conftest import free_port
from tests.helpers import TERMINAL, Receiver, job_body


def poll(check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            value = check()
            if value:
                return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def small_run(
    api: httpx.Client, sim_url: str, receiver: Receiver, worker_metrics: str
) -> dict[str, Any]:
    """Completed, failed and long jobs, a batch, a delivered and a dead-lettered
    webhook, and some upstream 429s. Returns what was submitted."""
    ids = submit_jobs(api, sim_url, receiver, worker_metrics)
    batch_id = submit_batch(api)
    return wait_and_count(api, receiver, ids, batch_id)


def submit_jobs(
    api: httpx.Client, sim_url: str, receiver: Receiver, worker_metrics: str
) -> list[str]:
    ids: list[str] = []

    def submit(body: dict[str, Any]) -> None:
        r = api.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])

    # 429s first, on a share of the requests, until the worker has counted one
    httpx.post(
        f"{sim_url}/_sim/config", json={"fault_429": 0.3, "retry_delay_s": 0.2}, timeout=10
    ).raise_for_status()
    for i in range(6):
        submit(job_body(f"ok {i} [sim duration=0.3]"))
    poll(
        lambda: 'code="429"' in httpx.get(worker_metrics, timeout=5).text,
        "the worker to count an upstream 429",
    )
    httpx.post(f"{sim_url}/_sim/config", json={"fault_429": 0.0}, timeout=10).raise_for_status()

    for i in range(3):
        submit(job_body(f"bad {i} [sim duration=0.3 outcome=failed]"))
    for i in range(2):  # in flight across a few scrapes
        submit(job_body(f"long {i} [sim duration=3]"))
    secret = generate_secret()
    receiver.secret = secret
    submit(
        job_body("hooked [sim duration=0.2]") | {"webhook": {"url": receiver.url, "secret": secret}}
    )
    dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    submit(job_body("dead hook [sim duration=0.2]", webhook=dead_url))
    return ids


def submit_batch(api: httpx.Client) -> str:
    rows = [
        {
            "custom_id": f"c-{i}",
            "interaction": {"model": "sim-model", "input": f"b {i} [sim duration=0.2]"},
        }
        for i in range(4)
    ]
    r = api.post(
        "/v1/batches",
        content=b"".join(json.dumps(x).encode() + b"\n" for x in rows),
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_and_count(
    api: httpx.Client, receiver: Receiver, ids: list[str], batch_id: str
) -> dict[str, Any]:
    def all_terminal() -> bool:
        return all(api.get(f"/v1/jobs/{j}").json()["status"] in TERMINAL for j in ids)

    poll(all_terminal, f"{len(ids)} jobs terminal", every=0.2)
    poll(
        lambda: api.get(f"/v1/batches/{batch_id}").json()["status"] != "in_progress",
        "the batch to end",
        every=0.2,
    )
    poll(lambda: receiver.snapshot(), "the webhook delivery")
    poll(lambda: api.get("/v1/webhooks/dead-letters").json()["data"], "a dead letter")
    statuses = [api.get(f"/v1/jobs/{j}").json()["status"] for j in ids]
    results = api.get(f"/v1/batches/{batch_id}/results").text.splitlines()
    statuses += [json.loads(x)["status"] for x in results]
    return {"jobs": len(statuses), "statuses": {s: statuses.count(s) for s in set(statuses)}}
