"""Checks of deploy/k8s/: schemas (``kubernetes-validate`` from PyPI; skips
without it), the API and worker Deployments, the HPA, Redis and the Secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy_common import (
    K8S,
    K8S_VERSIONS,
    load_yaml_docs,
    settings_env_names,
    step_timeout_default,
)

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
