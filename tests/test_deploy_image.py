"""Checks of deploy/compose.yaml, deploy/Dockerfile and its entrypoint.

``docker compose`` (plugin) or ``docker-compose`` (Debian package; ``make test``
installs it) validates the compose file; that test skips without either, and
the entrypoint test without ``sh``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import sys
import tomllib

import pytest

from tests.deploy_common import (
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    ENTRYPOINT,
    ROOT,
    assert_ok,
    load_yaml,
    run,
    seconds,
    settings_env_names,
    step_timeout_default,
)

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
    packages = setup["packages"]
    if isinstance(packages, dict):  # [tool.setuptools.packages.find]: the top-level dirs
        packages = {pat.split(".")[0].rstrip("*") for pat in packages["find"]["include"]}
    needed = {f"{m}.py" for m in setup["py-modules"]} | set(packages)
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
