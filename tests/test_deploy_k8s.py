"""Checks of deploy/k8s/: schemas (``kubernetes-validate`` from PyPI; skips
without it), the API and worker Deployments, the HPA, Redis and the Secret, and
that the ConfigMap and the Secret template list every setting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import SecretStr

from jobs.settings import Settings
from tests.deploy_common import (
    K8S,
    K8S_VERSIONS,
    NOT_DEPLOY_LEVEL,
    OTEL_ENV_NAMES,
    SECRET_FIELDS,
    commented_entries,
    field_env_names,
    load_yaml_docs,
    settings_env_names,
    step_timeout_default,
)

CONFIGMAP = K8S / "configmap.yaml"
SECRET_TEMPLATE = K8S / "secret-template" / "secret.yaml"

# ConfigMap values that differ from the defaults on purpose (the cluster's Redis
# and the shared results volume); every other value is the default.
CLUSTER_VALUES = frozenset({"redis_url", "results_url"})

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


def listed_names(path: Path) -> set[str]:
    """The variables a ConfigMap or Secret file lists: its keys and its
    commented-out entries."""
    (doc,) = load_yaml_docs(path)
    data = doc.get("data") or doc.get("stringData") or {}
    return set(data) | set(commented_entries(path))


def test_k8s_configmap_and_secret_list_every_setting() -> None:
    cm, secret = listed_names(CONFIGMAP), listed_names(SECRET_TEMPLATE)
    assert set(NOT_DEPLOY_LEVEL) <= set(Settings.model_fields), "allow-list names no setting"
    assert all(NOT_DEPLOY_LEVEL.values()), "an allow-listed setting without its reason"
    secret_typed = {
        f for f, info in Settings.model_fields.items() if SecretStr in get_args(info.annotation)
    }
    assert secret_typed <= SECRET_FIELDS, "a SecretStr setting not treated as a secret"

    missing, misplaced, allowed_but_listed = [], [], []
    for field in Settings.model_fields:
        names = set(field_env_names(field))
        where = secret if field in SECRET_FIELDS else cm
        if field in NOT_DEPLOY_LEVEL:
            if names & (cm | secret):
                allowed_but_listed.append(field)
        elif not names & where:
            missing.append(f"{sorted(names)[0]} ({field})")
        if field in SECRET_FIELDS and names & cm:
            misplaced.append(field)
    assert missing == [], (
        f"settings in neither deploy/k8s/configmap.yaml nor the Secret template: {missing}; "
        "list each with a one-line comment, or add it to NOT_DEPLOY_LEVEL "
        "(tests/deploy_common.py) with the reason"
    )
    assert misplaced == [], f"secrets in the ConfigMap: {misplaced}"
    assert allowed_but_listed == [], f"in NOT_DEPLOY_LEVEL and listed anyway: {allowed_but_listed}"
    assert (cm | secret) - settings_env_names() == set(), "names that are no setting"


def test_k8s_configmap_changes_no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's values are the defaults (but CLUSTER_VALUES), and each
    commented-out example is a valid value once uncommented."""
    (doc,) = load_yaml_docs(CONFIGMAP)
    data = doc["data"]
    assert all(isinstance(v, str) for v in data.values()), "a ConfigMap value that is no string"
    for name in [n for n in os.environ if n.startswith(("INTERQ_", "GEMINI_", "OTEL_"))]:
        monkeypatch.delenv(name)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    cfg = Settings(_env_file=None)  # type: ignore[call-arg]
    changed = {f for f in Settings.model_fields if getattr(cfg, f) != getattr(defaults, f)}
    assert changed == set(CLUSTER_VALUES)

    examples = commented_entries(CONFIGMAP) | commented_entries(SECRET_TEMPLATE)
    assert set(examples) & set(data) == set(), "both a value and a commented-out example"
    by_name = {n: f for f in Settings.model_fields for n in field_env_names(f)}
    for name, example in examples.items():
        value = yaml.safe_load(f"{name}: {example}")[name]
        assert isinstance(value, str), f"{name}: quote the example, a ConfigMap needs strings"
        if name in OTEL_ENV_NAMES:
            continue
        field = by_name[name]
        parsed = Settings.model_validate({field: value})
        assert getattr(parsed, field) != getattr(defaults, field), name
