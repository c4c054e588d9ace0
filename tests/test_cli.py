"""The batch CLI (`interq submit/results/status/cancel`) and jobs.client against a
real API served by uvicorn on loopback, a real worker and the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from jobs.client import AsyncClient, Client, InterqError
from jobs.dev.receiver import Delivery, Receiver
from jobs.settings import Settings
from tests.conftest import ROOT, free_port
from tests.helpers import wait_until

EXAMPLE = ROOT / "examples" / "batch.jsonl"


def custom_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines() if line]


@pytest.fixture()
def live_api(settings: Settings) -> Iterator[str]:
    """The real API app under uvicorn on a free loopback port, in a thread."""
    from api import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        if not thread.is_alive():
            pytest.fail("the API server did not start")
        threading.Event().wait(0.01)
    else:
        pytest.fail("the API server did not start in 10 s")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@dataclass
class Run:
    rc: int
    out: str
    err: str


async def interq(url: str, *args: str, timeout: float = 90, **env: str) -> Run:
    """`interq ARGS` in a subprocess (the event loop, and the worker in it, keep running)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INTERQ_")}
    full_env.update({"INTERQ_API_URL": url, "COLUMNS": "160", **env})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobs.cli",
        *args,
        cwd=ROOT,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture()
async def client(live_api: str) -> AsyncIterator[Client]:
    c = Client(live_api, timeout=10)
    yield c
    await asyncio.to_thread(c.close)


async def test_submit_watch_shows_progress_and_final_counts(
    live_api: str, worker: None, client: Client
) -> None:
    # TTY_COMPATIBLE makes rich treat the pipe as a terminal: the live bar renders
    run = await interq(
        live_api, "submit", str(EXAMPLE), "--watch", "--interval", "0.3", TTY_COMPATIBLE="1"
    )
    assert run.rc == 0, run.err
    batch_id = run.out.splitlines()[0]
    assert batch_id.startswith("bat_")
    assert f"batch {batch_id} completed" in run.out
    assert "20/20 done" in run.out
    assert "completed 20 · failed 0 · cancelled 0 · incomplete 0 · expired 0" in run.out
    assert "tokens:" in run.out
    # the bar (stderr) redrew while the jobs ran, with counts, rate and ETA
    assert run.err.count("/20") > 1, run.err
    assert "jobs/s" in run.err and "running" in run.err and "failed" in run.err
    assert "Traceback" not in run.err

    view = await asyncio.to_thread(client.batch, batch_id)
    assert view["status"] == "completed" and view["done"] == view["total"] == 20
    assert view["counts"]["completed"] == 20


async def test_results_writes_one_line_per_custom_id(
    live_api: str, worker: None, client: Client, tmp_path: Path
) -> None:
    run = await interq(live_api, "submit", str(EXAMPLE))
    assert run.rc == 0, run.err
    batch_id = run.out.strip()
    assert batch_id.startswith("bat_") and "accepted 20 jobs" in run.err
    await asyncio.to_thread(client.wait_batch, batch_id, timeout=60, poll_interval=0.2)

    out = tmp_path / "out.jsonl"
    run = await interq(live_api, "results", batch_id, "-o", str(out))
    assert run.rc == 0, run.err
    assert f"wrote 20 results to {out}" in run.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in lines] == custom_ids(EXAMPLE)
    for r in lines:
        assert r["status"] == "completed" and r["id"].startswith("job_")
        assert r["output_text"] and r["error"] is None
        assert set(r) >= {"custom_id", "id", "status", "output_text", "usage", "error"}
    assert not (tmp_path / "out.jsonl.part").exists()

    # and to stdout
    run = await interq(live_api, "results", batch_id)
    assert run.rc == 0, run.err
    assert [json.loads(x)["custom_id"] for x in run.out.splitlines()] == custom_ids(EXAMPLE)


async def test_malformed_batch_file_is_refused_with_line_numbers(
    live_api: str, client: Client, tmp_path: Path
) -> None:
    good = json.loads(EXAMPLE.read_text().splitlines()[0])
    rows = []
    for n in range(1, 11):
        if n == 3:
            rows.append('{"custom_id": "x3", "interaction": ')  # not JSON
        elif n == 6:
            rows.append(json.dumps({"custom_id": "x6"}))  # no interaction
        elif n == 9:
            rows.append(json.dumps({"custom_id": "x9", "interaction": {"input": "no model"}}))
        else:
            rows.append(json.dumps({**good, "custom_id": f"ok-{n}"}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows) + "\n")

    run = await interq(live_api, "submit", str(bad))
    assert run.rc == 1
    assert "batch refused" in run.err and "Traceback" not in run.err
    reported = [line for line in run.err.splitlines() if line.startswith(f"  {bad}:")]
    assert [int(line.split(":")[1]) for line in reported] == [3, 6, 9], run.err
    assert run.out == ""
    # refused whole: nothing was queued
    listed = await asyncio.to_thread(client.jobs)
    assert listed["data"] == []

    # the client raises the same, with the lines
    with pytest.raises(InterqError) as exc:
        await asyncio.to_thread(client.submit_batch, bad)
    assert exc.value.status == 422 and exc.value.code == "invalid_batch"
    assert [item["line"] for item in exc.value.lines or []] == [3, 6, 9]


async def test_cli_errors_are_one_line_exit_1(live_api: str, tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    cases = [
        (nobody, ["status", "bat_x"], "cannot reach interq"),
        (nobody, ["submit", str(EXAMPLE)], "cannot reach interq"),
        (live_api, ["status", "bat_nope"], "HTTP 404"),
        (live_api, ["results", "bat_nope", "-o", str(tmp_path / "r.jsonl")], "HTTP 404"),
        (live_api, ["cancel", "bat_nope"], "HTTP 404"),
        (live_api, ["status", "job_nope"], "HTTP 404"),
        (live_api, ["submit", str(tmp_path / "missing.jsonl")], "no such file"),
    ]
    runs = await asyncio.gather(*(interq(url, *args) for url, args, _ in cases))  # independent
    for (_, args, expect), run in zip(cases, runs, strict=True):
        assert run.rc == 1, (args, run)
        err_lines = run.err.strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith("error: "), (args, run.err)
        assert expect in err_lines[0], (args, run.err)
    assert not (tmp_path / "r.jsonl").exists()


async def test_cancel_and_status(live_api: str, worker: None, client: Client) -> None:
    jobs = [
        {"custom_id": f"long-{i}", "interaction": {"model": "m", "input": "x [sim duration=60]"}}
        for i in range(4)
    ]
    batch = await asyncio.to_thread(client.submit_batch, jobs)
    batch_id = batch["id"]
    await wait_until(
        lambda: asyncio.to_thread(lambda: client.batch(batch_id)["counts"]["running"] == 4),
        timeout=30,
        what="all running",
    )
    run = await interq(live_api, "status", batch_id)
    assert run.rc == 0, run.err
    assert f"{batch_id}  in_progress  0/4 done" in run.out and "running 4" in run.out

    run = await interq(live_api, "cancel", batch_id)
    assert run.rc == 0, run.err
    assert f"cancel requested for {batch_id}" in run.out
    final = await asyncio.to_thread(client.wait_batch, batch_id, timeout=30, poll_interval=0.2)
    assert final["counts"]["cancelled"] == 4 and final["status"] == "cancelled"

    run = await interq(live_api, "status", batch_id)
    assert run.rc == 0 and "cancelled 4" in run.out and "4/4 done" in run.out
    run = await interq(live_api, "status", batch_id, "--json")
    assert json.loads(run.out)["counts"]["cancelled"] == 4

    run = await interq(live_api, "status")  # no id: the recent jobs
    assert run.rc == 0, run.err
    listed = await asyncio.to_thread(client.jobs)
    for job in listed["data"]:
        assert job["id"] in run.out
    assert "4 most recent: cancelled 4" in run.out


async def test_client_single_job_round_trip(live_api: str, worker: None, client: Client) -> None:
    def round_trip() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        job = client.submit(
            {"model": "gemini-3.5-flash", "input": "Write a haiku [sim duration=0.5]"},
            custom_id="one",
            metadata={"team": "a"},
            timeout_s=300,
            idempotency_key="k-1",
        )
        again = client.submit(
            {"model": "gemini-3.5-flash", "input": "Write a haiku [sim duration=0.5]"},
            custom_id="one",
            metadata={"team": "a"},
            timeout_s=300,
            idempotency_key="k-1",
        )
        assert again["id"] == job["id"]
        done = client.wait(job["id"], timeout=60, poll_interval=0.2)
        return job, done, client.result(job["id"])

    job, done, stored = await asyncio.to_thread(round_trip)
    assert job["status"] == "queued" and job["id"].startswith("job_")
    assert done["status"] == "completed" and done["custom_id"] == "one"
    assert done["metadata"] == {"team": "a"} and "Write a haiku" in done["output_text"]
    assert stored["id"] == done["interaction_id"] and stored["status"] == "completed"

    with pytest.raises(InterqError) as exc:
        await asyncio.to_thread(client.cancel, job["id"])
    assert exc.value.status == 409 and exc.value.code == "illegal_transition"
    with pytest.raises(InterqError) as exc:
        await asyncio.to_thread(client.get, "job_nope")
    assert exc.value.status == 404 and exc.value.code == "not_found"
    with pytest.raises(TimeoutError):
        slow = await asyncio.to_thread(
            client.submit, {"model": "m", "input": "slow [sim duration=30]"}
        )
        await asyncio.to_thread(client.wait, slow["id"], timeout=0.5, poll_interval=0.1)


async def test_iter_results_follows_input_order(
    live_api: str, worker: None, client: Client
) -> None:
    # later lines finish first: the results must still come in input order
    durations = [2.0, 1.5, 1.0, 0.5, 0.1, 0.0]
    jobs = [
        {
            "custom_id": f"c-{i}",
            "interaction": {"model": "m", "input": f"job {i} [sim duration={d}]"},
            "metadata": {"i": i},
        }
        for i, d in enumerate(durations)
    ]

    def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        batch = client.submit_batch(iter(jobs))  # a generator, streamed as NDJSON
        final = client.wait_batch(batch["id"], timeout=60, poll_interval=0.2)
        return final, list(client.iter_results(batch["id"]))

    final, results = await asyncio.to_thread(run)
    assert final["counts"]["completed"] == len(jobs)
    assert [r["custom_id"] for r in results] == [j["custom_id"] for j in jobs]
    assert all(r["status"] == "completed" for r in results)
    assert final["usage"]["input_tokens"] > 0


async def test_async_client_over_asgi_transport(settings: Settings, worker: None) -> None:
    from api import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://interq", transport=transport) as c:
            batch = await c.submit_batch(EXAMPLE)  # streamed from the file
            assert batch["total"] == 20 and batch["status"] == "in_progress"
            final = await c.wait_batch(batch["id"], timeout=60, poll_interval=0.2)
            assert final["counts"]["completed"] == 20
            ids = [r["custom_id"] async for r in c.iter_results(batch["id"])]
            assert ids == custom_ids(EXAMPLE)

            tagged = await c.submit_batch(
                [{"custom_id": "a", "interaction": {"model": "m", "input": "x"}}],
                metadata={"run": 7, "by": "Zoë"},  # in X-Batch-Metadata, non-ASCII escaped
            )
            assert tagged["metadata"] == {"run": 7, "by": "Zoë"} and tagged["total"] == 1

            job = await c.submit({"model": "m", "input": "hi"}, custom_id="solo")
            done = await c.wait(job["id"], timeout=30, poll_interval=0.1)
            assert done["status"] == "completed"
            assert (await c.result(job["id"]))["status"] == "completed"
            with pytest.raises(InterqError) as exc:
                await c.batch("bat_nope")
            assert exc.value.status == 404


async def test_submit_webhook_url_reaches_every_job_and_the_batch(
    live_api: str, worker: None, client: Client, receiver: Receiver
) -> None:
    receiver.secret = "whsec_" + "A" * 43 + "="
    run = await interq(
        live_api, "submit", str(EXAMPLE), "--webhook-url", receiver.url,
        "--webhook-secret", receiver.secret,
    )  # fmt: skip
    assert run.rc == 0, run.err
    batch_id = run.out.strip()
    n = len(custom_ids(EXAMPLE))

    def all_in(ds: list[Delivery]) -> bool:
        return sum(d.type == "job.completed" for d in ds) == n and any(
            d.type == "batch.completed" for d in ds
        )

    await asyncio.to_thread(receiver.wait_for, all_in, 60, "every job's event and the batch's")
    got = receiver.snapshot()
    assert all(d.verified for d in got)
    jobs = {d.data["custom_id"] for d in got if d.type == "job.completed"}
    assert jobs == set(custom_ids(EXAMPLE))
    assert [d.data["id"] for d in got if d.type == "batch.completed"] == [batch_id]


async def test_rerun_queues_a_batchs_failed_lines(
    live_api: str, worker: None, client: Client
) -> None:
    jobs = [
        {"custom_id": f"r-{i}", "interaction": {"model": "m", "input": f"cli {i} {flaky}"}}
        for i, flaky in enumerate(["[sim duration=0.05 fail_first=1]", "[sim duration=0.05]"])
    ]
    batch_id = (await asyncio.to_thread(client.submit_batch, jobs))["id"]
    first = await asyncio.to_thread(client.wait_batch, batch_id, timeout=30, poll_interval=0.1)
    assert first["counts"]["failed"] == 1 and first["counts"]["completed"] == 1

    run = await interq(live_api, "rerun", batch_id, "--key", "cli-rerun")
    assert run.rc == 0, run.err
    assert f"{batch_id}: 1 jobs queued again" in run.out
    final = await asyncio.to_thread(client.wait_batch, batch_id, timeout=30, poll_interval=0.1)
    assert final["counts"]["completed"] == 2 and final["reruns"] == 1
