"""Checks of deploy/: alerts, Prometheus config, Grafana dashboard, that
compose.yaml lists every setting, and the README's Deploy section (Kubernetes in
test_deploy_k8s.py, the rest of compose and the image in test_deploy_image.py;
shared readers in deploy_common.py).

``promtool`` (Debian package ``prometheus``; ``make test`` installs it) is
required: the promtool tests fail without it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from jobs.settings import Settings
from tests.deploy_common import (
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    GRAFANA_VARS,
    METRIC_RE,
    NOT_DEPLOY_LEVEL,
    PENDING_GAUGES,
    PROM,
    ROOT,
    SERIES_SUFFIXES,
    alert_rules,
    assert_ok,
    dashboard_exprs,
    dashboard_panels,
    field_env_names,
    known_series,
    load_yaml,
    metric_families,
    run,
)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package "
            "(apt-get install prometheus), which provides /usr/bin/promtool"
        )
    return path


# --------------------------------------------------------------------------- Prometheus


def test_promtool_check_rules(promtool: str) -> None:
    assert_ok(run([promtool, "check", "rules", "deploy/prometheus/alerts.yml"]))


def test_promtool_test_rules(promtool: str) -> None:
    assert_ok(run([promtool, "test", "rules", "deploy/prometheus/alerts_test.yml"]))


def test_promtool_check_config(promtool: str) -> None:
    # rule_files are relative to the config file, so this works from anywhere.
    assert_ok(run([promtool, "check", "config", "deploy/prometheus/prometheus.yml"]))


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    names = {r["alert"] for r in alert_rules()}
    tests = load_yaml(PROM / "alerts_test.yml")["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in tests:
        for case in t.get("alert_rule_test") or []:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a not-firing test"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_requested_alerts_exist_with_the_metrics_they_watch() -> None:
    by_metric = {
        "interq_worker_up": None,
        "interq_jobs_finished_total": None,
        "interq_oldest_inflight_seconds": None,
        "interq_webhook_dead_letters_total": None,
        'interq_upstream_requests_total{code="429"}': None,
        "interq_redis_up": None,
    }
    for rule in alert_rules():
        for m in by_metric:
            if m in rule["expr"]:
                by_metric[m] = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]
    assert all(by_metric.values()), f"no alert on: {[m for m, a in by_metric.items() if not a]}"


def test_prometheus_scrapes_api_and_every_worker() -> None:
    cfg = load_yaml(PROM / "prometheus.yml")
    assert cfg["rule_files"] == ["alerts.yml"]
    targets = set()
    for job in cfg["scrape_configs"]:
        for sd in job.get("dns_sd_configs") or []:
            targets |= {f"{n}:{sd['port']}" for n in sd["names"]}
        for sc in job.get("static_configs") or []:
            targets |= set(sc["targets"])
    assert {"api:8000", "worker:9101"} <= targets
    worker_port = Settings.model_fields["worker_metrics_port"].default
    assert f"worker:{worker_port}" in targets


def test_alerts_and_dashboard_name_only_real_metrics() -> None:
    known = known_series()
    used = {m for r in alert_rules() for m in METRIC_RE.findall(r["expr"])}
    used |= {m for e in dashboard_exprs() for m in METRIC_RE.findall(e)}
    assert used - known == set(), "unknown metric names (typo, or missing from jobs/metrics.py)"


# --------------------------------------------------------------------------- Grafana


def test_dashboard_targets_are_interq_promql() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p.get("targets"), f"panel {p['title']!r} has no targets"
        for t in p["targets"]:
            expr = t.get("expr")
            assert isinstance(expr, str) and expr.strip(), f"empty expr in {p['title']!r}"
            assert METRIC_RE.search(expr), f"{p['title']!r}: {expr!r} names no interq_ metric"
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_covers_every_metric_family() -> None:
    used = {m for e in dashboard_exprs() for m in METRIC_RE.findall(e)}
    missing = []
    for fam, kind in metric_families().items():
        if not any(fam + s in used for s in SERIES_SUFFIXES.get(kind, ("",))):
            missing.append(fam)
    missing += sorted(PENDING_GAUGES - used)
    assert missing == [], "metric families with no dashboard panel"


def test_dashboard_exprs_parse(promtool: str, tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run([promtool, "check", "rules", str(path)]))


def test_grafana_provisioning() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = load_yaml(prov / "datasources" / "prometheus.yml")["datasources"]
    assert [d["type"] for d in ds] == ["prometheus"]
    providers = load_yaml(prov / "dashboards" / "interq.yml")["providers"]
    path = providers[0]["options"]["path"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[path] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


# --------------------------------------------------------------------------- compose


def test_compose_lists_every_setting() -> None:
    """Each setting (but NOT_DEPLOY_LEVEL) is in the API's and the workers'
    environment, most with no value: passed through from the shell when set."""
    services = load_yaml(COMPOSE)["services"]
    for service in ("api", "worker"):
        env = set(services[service]["environment"])
        missing = [
            field_env_names(f)[0]
            for f in Settings.model_fields
            if f not in NOT_DEPLOY_LEVEL and not set(field_env_names(f)) & env
        ]
        assert missing == [], (
            f"compose.yaml's {service} environment lacks {missing}: list each in "
            "x-interq-env with a one-line comment, or add it to NOT_DEPLOY_LEVEL "
            "(tests/deploy_common.py) with the reason"
        )


# --------------------------------------------------------------------------- README


def test_readme_deploy_section_matches_the_files() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\n## Deploy\n" in readme
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(Interq[A-Za-z0-9]+)`", section))
    assert named == {r["alert"] for r in alert_rules()}, "README alert table vs alerts.yml"
    for path in re.findall(r"`(deploy/[^`\s]*)`", section):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
    for f in DEPLOY.rglob("*"):
        if f.is_file() and f.parent in (DEPLOY, PROM):
            rel = f.relative_to(ROOT).as_posix()
            if not rel.endswith("_test.yml"):
                assert rel in section, f"README Deploy section does not mention {rel}"
