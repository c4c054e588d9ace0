"""A real Prometheus scrapes a real API and worker during a small mixed run, then
evaluates every dashboard expression and alert rule through its HTTP API; and
``promtool check metrics`` lints both ``/metrics`` outputs.

Slow-ish (about 20-30 s, one stack for the whole module). Needs ``prometheus``
and ``promtool`` (Debian package ``prometheus``; ``.ci/run`` installs it): the
tests fail without them unless ``INTERQ_SKIP_PROMETHEUS=1`` is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.conftest import ROOT, free_port
from tests.helpers import Receiver, SimServer, fast_settings, worker_env
from tests.prom_run import poll, small_run

# Whole module: Prometheus start-up, a ~10 s run and the scrapes after it.
pytestmark = pytest.mark.timeout(90)

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "interq.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Grafana's variables, as Grafana would expand them on a 1 s scrape interval
# (rate windows need at least two samples; 1m holds ~60).
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$datasource": "prometheus",
}
# Dashboard expressions allowed to return no series after the small run below.
# Keep this short: every entry is a panel nobody can check here.
MAY_BE_EMPTY = {
    # A labelled counter: a series appears only once some step raised an
    # unexpected error, which a healthy run does not do.
    "sum by (step) (rate(interq_step_errors_total[$__rate_interval]))": "no step errors",
}
# Alerts whose expression must be empty in this healthy run (a worker and the
# API up, Redis reachable), and ones it must make non-empty.
QUIET_ALERTS = {"InterqNoWorkerUp", "InterqRedisDown", "InterqAPIDown", "InterqLoopFailing"}
FIRING_ALERTS = {"InterqWebhookDeadLetters"}  # the run dead-letters one event
SCRAPES_AFTER_RUN = 3


# --------------------------------------------------------------------------- helpers


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        msg = (
            f"{name} not found: install Debian's `prometheus` package "
            "(apt-get install prometheus; .ci/run does), or set INTERQ_SKIP_PROMETHEUS=1"
        )
        if os.environ.get("INTERQ_SKIP_PROMETHEUS") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return path


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            out.extend((p.get("title", ""), t["expr"]) for t in p.get("targets") or [])
            walk(p.get("panels") or [])

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return out


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


@dataclass
class Run:
    """The stack after the run: everything scraped SCRAPES_AFTER_RUN more times."""

    api_url: str
    worker_metrics_url: str
    prom_url: str
    prom_log: Path
    summary: dict[str, Any] = field(default_factory=dict)

    def query(self, expr: str) -> dict[str, Any]:
        r = httpx.get(f"{self.prom_url}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = r.json()
        return body

    def value(self, expr: str) -> list[dict[str, Any]]:
        body = self.query(expr)
        assert body["status"] == "success", (expr, body, self.log_tail())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def log_tail(self) -> str:
        return "\n".join(self.prom_log.read_text(errors="replace").splitlines()[-30:])


def has_data(data: dict[str, Any]) -> bool:
    if data["resultType"] in ("scalar", "string"):
        return True
    return bool(data["result"])


# --------------------------------------------------------------------------- the stack


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def interq_env(redis_url: str, sim_url: str, tmp: Path, metrics_port: int) -> dict[str, str]:
    cfg = fast_settings(redis_url, sim_url, tmp, retry_max_s=1.0, webhook_schedule_s=[0.2, 0.2])
    prices = '{"*": {"input": 1.0, "output": 4.0}}'  # the cost panel has something to show
    return worker_env(cfg, INTERQ_WORKER_METRICS_PORT=str(metrics_port), INTERQ_PRICES=prices)


def prometheus_config(tmp: Path, api: str, worker: str) -> Path:
    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "interq-api", "static_configs": [{"targets": [api]}]},
            {"job_name": "interq-worker", "static_configs": [{"targets": [worker]}]},
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run(redis_url: str, receiver_module: Receiver) -> Iterator[Run]:
    prometheus, _ = tool("prometheus"), tool("promtool")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    sim = SimServer(free_port())
    sim.start()
    tmp = Path(tempfile.mkdtemp(prefix="interq-prom-"))
    api_port, worker_port, prom_port = free_port(), free_port(), free_port()
    env = interq_env(redis_url, sim.url, tmp, worker_port)
    api_url = f"http://127.0.0.1:{api_port}"
    worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
    prom_url = f"http://127.0.0.1:{prom_port}"
    uvicorn = [sys.executable, "-m", "uvicorn", "api:app", "--host", "127.0.0.1"]
    prom_cfg = prometheus_config(tmp, f"127.0.0.1:{api_port}", f"127.0.0.1:{worker_port}")
    try:
        with (
            process(
                [*uvicorn, "--port", str(api_port), "--log-level", "warning"], tmp / "api.log", env
            ),
            process([sys.executable, "-m", "jobs.cli", "worker"], tmp / "worker.log", env),
            process(
                [
                    prometheus,
                    f"--config.file={prom_cfg}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                tmp / "prometheus.log",
            ) as prom,
            # 60 s: the first create may wait for the SDK models the API imports
            httpx.Client(base_url=api_url, timeout=60) as api,
        ):
            poll(lambda: api.get("/healthz").status_code == 200, "the API")
            poll(lambda: httpx.get(worker_metrics, timeout=2).status_code == 200, "worker metrics")
            state = Run(api_url, worker_metrics, prom_url, tmp / "prometheus.log")

            def targets_up() -> bool:
                assert prom.poll() is None, f"prometheus exited:\n{state.log_tail()}"
                active = httpx.get(f"{prom_url}/api/v1/targets", timeout=5).json()["data"][
                    "activeTargets"
                ]
                return len(active) == 2 and all(t["health"] == "up" for t in active)

            poll(targets_up, "Prometheus to scrape the API and the worker")
            state.summary = small_run(api, sim.url, receiver_module, worker_metrics)

            # a few more scrapes of both targets, all of them after the run ended
            done = time.time()

            def scraped_after_run() -> bool:
                res = state.value("min(timestamp(up)) and min(up) == 1")
                return bool(res) and float(res[0]["value"][1]) >= done + SCRAPES_AFTER_RUN

            poll(scraped_after_run, f"{SCRAPES_AFTER_RUN} scrapes after the run", every=0.25)
            yield state
    finally:
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def receiver_module() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


# --------------------------------------------------------------------------- tests


def test_every_dashboard_expression_returns_data(run: Run) -> None:
    exprs = dashboard_exprs()
    assert exprs
    assert set(MAY_BE_EMPTY) <= {e for _, e in exprs}, "stale MAY_BE_EMPTY entry"
    problems = []
    for title, expr in exprs:
        body = run.query(expand(expr))
        if body.get("status") != "success":
            problems.append(f"{title!r}: {expr}\n    {body.get('errorType')}: {body.get('error')}")
        elif not has_data(body["data"]) and expr not in MAY_BE_EMPTY:
            problems.append(f"{title!r}: {expr}\n    returned no series")
    assert problems == [], (
        f"after {run.summary}:\n" + "\n".join(problems) + f"\nprometheus log:\n{run.log_tail()}"
    )


def test_every_alert_expression_evaluates(run: Run) -> None:
    rules = alert_rules()
    assert QUIET_ALERTS | FIRING_ALERTS <= {r["alert"] for r in rules}
    problems = []
    for rule in rules:
        name, body = rule["alert"], run.query(rule["expr"])
        if body.get("status") != "success":
            problems.append(f"{name}: {body.get('errorType')}: {body.get('error')}")
            continue
        result = body["data"]["result"]
        if name in QUIET_ALERTS and result:
            problems.append(f"{name} matches in a healthy run: {result}")
        if name in FIRING_ALERTS and not result:
            problems.append(f"{name} does not match after the run dead-lettered an event")
    assert problems == [], f"after {run.summary}:\n" + "\n".join(problems)


def test_prometheus_loaded_every_alert_rule_healthy(run: Run) -> None:
    want = {r["alert"] for r in alert_rules()}

    def rules() -> dict[str, dict[str, Any]]:
        r = httpx.get(f"{run.prom_url}/api/v1/rules", params={"type": "alert"}, timeout=5)
        got = {x["name"]: x for g in r.json()["data"]["groups"] for x in g["rules"]}
        # health is "unknown" until the rule's first evaluation (every 1 s here)
        return got if all(x["health"] != "unknown" for x in got.values()) else {}

    got = poll(rules, "every alert rule evaluated once")
    assert set(got) == want
    bad = {n: (x["health"], x.get("lastError")) for n, x in got.items() if x["health"] != "ok"}
    assert bad == {}


@pytest.mark.parametrize("target", ["api", "worker"])
def test_promtool_check_metrics(run: Run, target: str) -> None:
    url = f"{run.api_url}/metrics" if target == "api" else run.worker_metrics_url
    text = httpx.get(url, timeout=10).text
    assert "interq_" in text
    proc = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (
        f"promtool check metrics on the {target}:\n{proc.stdout}{proc.stderr}"
    )


# Panels whose value after the run is known: (title, expr, expected).
KNOWN_VALUES = [
    ("Workers up", "sum(interq_worker_up)", 1.0),
    ("Queue depth", "max(interq_queue_depth)", 0.0),
    ("Redis", "min(interq_redis_up)", 1.0),
    ("In flight", "sum(max by (model) (interq_jobs_in_flight))", 0.0),
]


@pytest.mark.parametrize(("title", "expr", "expected"), KNOWN_VALUES)
def test_panels_read_the_run(run: Run, title: str, expr: str, expected: float) -> None:
    assert (title, expr) in dashboard_exprs()
    assert [float(r["value"][1]) for r in run.value(expr)] == [expected], run.summary


def test_jobs_by_status_counts_every_job(run: Run) -> None:
    expr = "max by (status) (interq_jobs_by_status)"
    assert expr in {e for _, e in dashboard_exprs()}
    got = {r["metric"]["status"]: float(r["value"][1]) for r in run.value(expr)}
    assert {s: n for s, n in got.items() if n} == run.summary["statuses"]


def test_every_accepted_job_is_counted(run: Run) -> None:
    finished = run.value("sum(interq_jobs_finished_total)")
    accepted = run.value("sum(interq_jobs_accepted_total)")
    assert [float(r["value"][1]) for r in finished] == [float(run.summary["jobs"])]
    assert [float(r["value"][1]) for r in accepted] == [float(run.summary["jobs"])]
