"""``interq up``'s decision (``plan_up``): simulator or real API from the same
Settings the children read (environment and ``.env``), and its banner."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli.up import plan_up, webhook_note
from jobs.settings import Settings


def test_key_only_in_dotenv_means_no_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("GEMINI_API_KEY", "INTERQ_GEMINI_API_KEY", "INTERQ_UPSTREAM_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / ".env").write_text("GEMINI_API_KEY=real-key-from-dotenv\n")
    plan = plan_up(Settings(), {}, sim_port=8090, redis_answers=True)
    assert not plan.simulator
    assert "INTERQ_UPSTREAM_URL" not in plan.env


def test_no_key_anywhere_runs_the_simulator_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("GEMINI_API_KEY", "INTERQ_GEMINI_API_KEY", "INTERQ_WEBHOOK_ALLOW_PRIVATE"):
        monkeypatch.delenv(var, raising=False)
    plan = plan_up(Settings(), {"GEMINI_API_KEY": ""}, sim_port=8091, redis_answers=False)
    assert plan.simulator and plan.start_redis
    assert plan.env["INTERQ_UPSTREAM_URL"] == "http://127.0.0.1:8091"
    assert "GEMINI_API_KEY" not in plan.env
    assert "ANY address" in plan.notes[-1] and "private" in plan.notes[-1]


def test_worker_metrics_ports_come_from_the_setting() -> None:
    plan = plan_up(
        Settings(gemini_api_key="k", worker_metrics_port=9300),
        {},
        sim_port=8090,
        redis_answers=True,
    )
    assert [plan.metrics_port(i) for i in range(3)] == [9300, 9301, 9302]


def test_banner_says_exactly_what_is_allowed() -> None:
    assert "public addresses only" in webhook_note(Settings(webhook_allow_private=False))
    nets = Settings(webhook_allowed_networks=["10.1.0.0/16"])
    assert "10.1.0.0/16" in webhook_note(nets)
