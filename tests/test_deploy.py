"""Checks of deploy/: alerts, Prometheus config, Grafana dashboard, k8s, compose, image.

External tools: ``promtool`` (Debian package ``prometheus``) is required: the
promtool tests fail without it. The others skip with the reason when missing:
``kubernetes-validate`` (PyPI), ``docker compose`` (plugin) or ``docker-compose``
(Debian package), ``sh``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from jobs.observe import metrics
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "interq.json"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"

# Queue-wide gauges the dashboard and alerts use that jobs/metrics.py does not
# define yet (being added). Once they are there they are checked like the rest.
PENDING_GAUGES = frozenset(
    {
        "interq_queue_depth",
        "interq_jobs_in_flight",
        "interq_oldest_inflight_seconds",
        "interq_redis_up",
        "interq_jobs_by_status",
    }
)
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
}
METRIC_RE = re.compile(r"\binterq_[a-z0-9_]+")
# Grafana's variables, replaced by something PromQL accepts before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
K8S_VERSIONS = ("1.29.0", "latest")


# --------------------------------------------------------------------------- helpers


def metric_families() -> dict[str, str]:
    """Family name -> type for every collector defined in jobs/metrics.py."""
    out: dict[str, str] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for fam in obj.describe():
                out[fam.name] = fam.type
    assert out, "no prometheus_client collectors found in jobs/metrics.py"
    return out


def known_series() -> set[str]:
    """Every sample name interq exports (or is about to), for spotting typos."""
    names = {
        fam + suffix
        for fam, kind in metric_families().items()
        for suffix in SERIES_SUFFIXES.get(kind, ("",))
    }
    return names | PENDING_GAUGES


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def dashboard_panels() -> list[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for p in panels:
            out.append(p)
            out.extend(walk(p.get("panels") or []))
        return out

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets") or []]


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROM / "alerts.yml")["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def settings_env_names() -> set[str]:
    return {f"INTERQ_{name.upper()}" for name in Settings.model_fields} | {"GEMINI_API_KEY"}


def step_timeout_default() -> float:
    default = Settings.model_fields["step_timeout_s"].default
    assert isinstance(default, float)
    return default


def seconds(duration: str | int) -> float:
    """A compose / Prometheus duration ("90s", "1m30s") in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package "
            "(apt-get install prometheus), which provides /usr/bin/promtool"
        )
    return path


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("cwd", ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stdout}\n{proc.stderr}"


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


# --------------------------------------------------------------------------- Kubernetes


def k8s_files() -> list[Path]:
    files = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
    assert files, "no manifests under deploy/k8s"
    return files


def k8s_resources() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for f in k8s_files():
        for doc in load_yaml_docs(f):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_k8s_manifests_validate_against_schemas() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate not installed (pip install kubernetes-validate==1.37.0)",
    )
    from kubernetes_validate.utils import latest_version

    errors = []
    for f in k8s_files():
        for doc in load_yaml_docs(f):
            for version in K8S_VERSIONS:
                v = latest_version() if version == "latest" else version
                try:
                    kv.validate(doc, v, strict=True)
                except kv.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    errors.append(f"{f.name} {doc['kind']}/{doc['metadata']['name']} {v}: {path}")
                    errors.append(f"    {e.message}")
                except kv.SchemaNotFoundError:
                    errors.append(f"{f.name}: no schema for {doc['apiVersion']} {doc['kind']}")
    assert errors == [], "\n".join(errors)


def test_k8s_api_and_worker() -> None:
    res = k8s_resources()
    cm = res[("ConfigMap", "interq-config")]["data"]
    assert set(cm) - settings_env_names() == set(), "ConfigMap keys that are no setting"
    step_timeout = float(cm.get("INTERQ_STEP_TIMEOUT_S", step_timeout_default()))

    api = res[("Deployment", "interq-api")]["spec"]["template"]["spec"]
    (c,) = api["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"

    worker = res[("Deployment", "interq-worker")]["spec"]["template"]["spec"]
    assert worker["containers"][0]["command"] == ["interq", "worker"]
    assert worker["terminationGracePeriodSeconds"] > step_timeout + 10

    for kind, name in (("Deployment", "interq-api"), ("Deployment", "interq-worker")):
        pod = res[(kind, name)]["spec"]["template"]["spec"]
        assert pod["enableServiceLinks"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        refs = [
            e.get("configMapRef", e.get("secretRef"))["name"]
            for e in pod["containers"][0]["envFrom"]
        ]
        assert refs == ["interq-config", "interq-secrets"], name
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims <= {n for k, n in res if k == "PersistentVolumeClaim"}, name


def test_k8s_hpa_scales_workers_on_queue_depth() -> None:
    res = k8s_resources()
    hpa = res[("HorizontalPodAutoscaler", "interq-worker")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "interq-worker"
    names = [
        m[m["type"].lower()]["metric"]["name"] for m in hpa["metrics"] if m["type"] != "Resource"
    ]
    assert names == ["interq_queue_depth"]


def test_k8s_redis_and_secret() -> None:
    res = k8s_resources()
    redis = res[("StatefulSet", "interq-redis")]["spec"]
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["volumeClaimTemplates"]
    secrets = [(f, d) for f in k8s_files() for d in load_yaml_docs(f) if d["kind"] == "Secret"]
    assert secrets, "no Secret placeholder"
    for f, doc in secrets:
        # outside deploy/k8s/ itself, so `kubectl apply -f deploy/k8s/` never overwrites it
        assert f.parent != K8S, f
        assert doc["stringData"]["GEMINI_API_KEY"] == "", "a real-looking key in the template"


# --------------------------------------------------------------------------- compose


def compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = run(["docker", "compose", "version"])
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_validates() -> None:
    cmd = compose_command()
    if cmd is None:
        pytest.skip(
            "neither `docker compose` (plugin) nor `docker-compose` "
            "(Debian package docker-compose) is installed"
        )
    # No secrets into the rendered config (and the test output): scrub them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERQ_", "GEMINI_"))}
    assert_ok(run([*cmd, "-f", str(COMPOSE), "config", "-q"], env=env))


def test_compose_services() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert {"redis", "api", "worker", "simulator", "prometheus", "grafana"} <= set(services)
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "healthcheck" in redis
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["simulator"]["command"] == ["interq", "simulator", "--host", "0.0.0.0"]

    worker = services["worker"]
    assert worker["command"] == ["interq", "worker"]
    assert worker["deploy"]["replicas"] == 2
    assert seconds(worker["stop_grace_period"]) > step_timeout_default() + 10
    allowed = settings_env_names() | {"INTERQ_SIMULATOR_URL"}
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert set(env) - allowed == set(), f"{name}: environment names that are no setting"
        assert env["INTERQ_SIMULATOR_URL"] == "http://simulator:8090"
        assert env["INTERQ_WORKER_METRICS_PORT"] == "9101"
    # the API and the workers share the results volume
    assert set(services["api"]["volumes"]) == set(worker["volumes"])


# --------------------------------------------------------------------------- image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    ins = dockerfile_instructions()
    stages = [rest for op, rest in ins if op == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS builder"), stages
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "pip install --no-deps ." in runs
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in ins
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]
    user = [rest for op, rest in final if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert json.loads(next(rest for op, rest in final if op == "CMD")) == [
        "interq",
        "api",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]

    # everything the package is built from is copied, and every COPY source exists
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied: set[str] = set()
    for op, rest in ins:
        if op == "COPY" and "--from=" not in rest:
            srcs = [s for s in rest.split() if not s.startswith("--")][:-1]
            copied |= {s for s in srcs if "$" not in s}
    needed = {f"{m}.py" for m in setup["py-modules"]} | set(setup["packages"])
    needed |= {"pyproject.toml", "README.md"}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
    # and not filtered out of the build context
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for src in copied | {"requirements.lock"}:
        assert any(fnmatch.fnmatch(src, k) for k in kept), f"{src} is .dockerignore'd"


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        (
            {"INTERQ_SIMULATOR_URL": "http://simulator:8090"},
            {
                "INTERQ_UPSTREAM_URL": "http://simulator:8090",
                "INTERQ_WEBHOOK_ALLOW_PRIVATE": "true",
                "GEMINI_API_KEY": None,
            },
        ),
        (
            {"INTERQ_SIMULATOR_URL": "http://simulator:8090", "GEMINI_API_KEY": ""},
            {"INTERQ_UPSTREAM_URL": "http://simulator:8090", "GEMINI_API_KEY": None},
        ),
        (
            {"INTERQ_SIMULATOR_URL": "http://simulator:8090", "GEMINI_API_KEY": "k"},
            {"INTERQ_UPSTREAM_URL": None, "INTERQ_WEBHOOK_ALLOW_PRIVATE": None},
        ),
        ({"GEMINI_API_KEY": ""}, {"GEMINI_API_KEY": None, "INTERQ_UPSTREAM_URL": None}),
    ],
    ids=["no-key", "empty-key", "key", "empty-key-no-simulator"],
)
def test_entrypoint_picks_the_simulator_only_without_a_key(
    env: dict[str, str], expect: dict[str, str | None]
) -> None:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh to run deploy/docker-entrypoint.sh")
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    proc = run([sh, str(ENTRYPOINT), sys.executable, "-c", dump], env=env)
    assert_ok(proc)
    got = json.loads(proc.stdout)
    for name, value in expect.items():
        assert got.get(name) == value, name
    if env.get("GEMINI_API_KEY"):
        assert got["GEMINI_API_KEY"] == env["GEMINI_API_KEY"]


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
