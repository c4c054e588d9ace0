"""What the deploy/ checks share: the paths, the metric names jobs/metrics.py
defines, the dashboard and alert readers, the variables the settings are read
from, and a subprocess runner."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import AliasChoices

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

# Settings deliberately not listed in the deploy files, field name -> the
# reason (test-only or dev-only ones, say). Every other field of
# jobs.settings.Settings must be listed in deploy/k8s/configmap.yaml (the Secret
# template if it is a secret; a value, or a commented-out example when its
# default is "unset") and in compose.yaml's API/worker environment, so a new
# setting cannot be forgotten (test_k8s_configmap_and_secret_list_every_setting,
# test_compose_lists_every_setting): list it there with a one-line comment, or
# add it here with its reason. None so far: every setting is one an operator
# may want.
NOT_DEPLOY_LEVEL: dict[str, str] = {}

# Settings that go in the Secret, never in the ConfigMap (every SecretStr field
# is one, which test_deploy_k8s checks).
SECRET_FIELDS = frozenset({"gemini_api_key", "api_keys", "upstream_webhook_secret"})
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
# The OpenTelemetry SDK variables the deploy files may set beside the settings
# (jobs/observe/tracing.py, README "Traces"); OTEL_BSP_* and the rest also work.
OTEL_ENV_NAMES = frozenset(
    {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    }
)


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


def field_env_names(field: str) -> tuple[str, ...]:
    """The variables ``Settings`` reads ``field`` from: its alias's choices
    (``gemini_api_key``: GEMINI_API_KEY, INTERQ_GEMINI_API_KEY), else INTERQ_ + FIELD."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(c for c in alias.choices if isinstance(c, str))
    if isinstance(alias, str):
        return (alias,)
    return (f"INTERQ_{field.upper()}",)


def settings_env_names() -> set[str]:
    """Every variable the API and the workers read: each setting's names, and
    the OpenTelemetry SDK's variables their tracing reads."""
    return {n for field in Settings.model_fields for n in field_env_names(field)} | OTEL_ENV_NAMES


# Commented-out entries (``# NAME: example``) of a YAML mapping: how the deploy
# files list a setting whose default is "unset" (an empty value is a value).
COMMENTED_ENTRY_RE = re.compile(r"^\s*#\s*([A-Z][A-Z0-9_]*):\s+(\S.*)$", re.M)


def commented_entries(path: Path) -> dict[str, str]:
    """Name -> example value of each commented-out entry in ``path``."""
    return {m[1]: m[2] for m in COMMENTED_ENTRY_RE.finditer(path.read_text())}


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


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("cwd", ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stdout}\n{proc.stderr}"
