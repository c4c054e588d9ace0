"""``interq up``: what it decides to start (from the environment and ``.env``,
as the services read them), the banner's words about webhooks, and the
workers' metrics ports, which a restarted worker keeps."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from jobs.cli.up import plan_up, webhook_note
from jobs.dev.harness import Stack, free_port
from jobs.settings import Settings


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("GEMINI_API_KEY", "INTERQ_GEMINI_API_KEY", "INTERQ_WORKER_METRICS_PORT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_a_key_only_in_dot_env_means_the_real_api(in_tmp: Path) -> None:
    (in_tmp / ".env").write_text("GEMINI_API_KEY=key-from-dot-env\n")
    plan = plan_up(Settings(), {}, sim_port=8090, redis_answers=True)
    assert plan.simulator is False
    assert "INTERQ_UPSTREAM_URL" not in plan.env  # the real API's default URL


def test_without_a_key_the_simulator_gets_no_key(in_tmp: Path) -> None:
    plan = plan_up(Settings(), {"GEMINI_API_KEY": ""}, sim_port=8123, redis_answers=True)
    assert plan.simulator is True
    assert plan.env["INTERQ_UPSTREAM_URL"] == "http://127.0.0.1:8123"
    assert "GEMINI_API_KEY" not in plan.env and "INTERQ_GEMINI_API_KEY" not in plan.env


def test_banner_says_every_private_address_is_allowed(in_tmp: Path) -> None:
    plan = plan_up(Settings(), {}, sim_port=8090, redis_answers=True)
    text = "\n".join(plan.notes)
    assert "localhost are allowed" not in text
    assert "ANY address" in text and "private" in text
    assert "public addresses only" in webhook_note(Settings(webhook_allow_private=False))


def test_worker_metrics_ports_come_from_the_setting(in_tmp: Path) -> None:
    (in_tmp / ".env").write_text("INTERQ_WORKER_METRICS_PORT=9300\n")
    plan = plan_up(Settings(), {}, sim_port=8090, redis_answers=True)
    assert [plan.metrics_port(i) for i in range(3)] == [9300, 9301, 9302]


def test_a_restarted_worker_keeps_its_metrics_port(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    with Stack(tmp_path / "stack") as st:
        st.start_redis()
        workers = [  # started side by side, then each waited for
            st.start_worker(f"worker-{i}", metrics_port=port, wait=False)
            for i, port in enumerate(ports)
        ]
        for w in workers:
            st.wait_ready(w)
        old_pid = st.proc("worker-0").pid
        st.restart("worker-0")  # SIGKILL, then the same command; waits until ready
        assert st.proc("worker-0").pid != old_pid
        for port in ports:
            body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert "interq_worker_up 1.0" in body
