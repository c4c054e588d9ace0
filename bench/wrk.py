"""``wrk`` as the load generator for ``bench/intake.py``: a C load generator,
one thread, so that the figures are the API's and not the client's (the
in-process httpx loop of ``bench/intake.py`` collapses under concurrency).

``find_wrk()`` takes ``wrk`` from PATH, or installs the Debian package with
``apt-get install -y wrk`` when it is missing (and says so). ``run()`` drives it
with ``bench/wrk_post_job.lua``, which POSTs a realistic job body (or GETs
``/healthz``) and prints its figures as one ``WRK_JSON {...}`` line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.common import ROOT, fmt, table
from jobs.dev import harness

LUA = Path(__file__).with_name("wrk_post_job.lua")
API_KEY = "bench-intake-key-0123456789abcdef"


def find_wrk() -> str:
    """The ``wrk`` binary: on PATH, or apt-get installed now (Debian: package ``wrk``)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not on PATH: installing it with `apt-get install -y wrk` ...", flush=True)
    apt = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(apt, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        subprocess.run(apt, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it")
    print(f"installed {found}", flush=True)
    return found


def run(
    wrk: str, url: str, conns: int, seconds: float, *, method: str = "POST", api_key: str = ""
) -> dict[str, Any]:
    """One wrk run: ``conns`` connections on one thread for ``seconds``. Returns
    requests, per_s, p50/p90/p99/max (ms), socket errors and the count of each
    non-2xx status (``non2xx``)."""
    env = {**os.environ, "WRK_METHOD": method, "WRK_API_KEY": api_key}
    env["WRK_RUN"] = uuid.uuid4().hex[:12]  # Idempotency-Keys unique to this run
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    data: dict[str, Any] = json.loads(lines[-1].removeprefix("WRK_JSON "))
    data["non2xx_total"] = sum(data["non2xx"].values())
    data["socket_errors_total"] = sum(data["socket_errors"].values())
    data.update(conns=conns, method=method)
    return data


def invalid(runs: list[dict[str, Any]]) -> list[str]:
    """Why a sweep does not count: a 429 (a rate limit answered, not the API's
    speed), any other non-2xx answer, a socket error, or an answer that
    replayed an earlier job (a reused Idempotency-Key), named."""
    why = []
    for r in runs:
        if r["non2xx"]:
            why.append(f"{r['method']} at {r['conns']} conns: non-2xx {r['non2xx']}")
        if r.get("replayed"):
            why.append(f"{r['method']} at {r['conns']} conns: {r['replayed']} replays, not creates")
        if r["socket_errors_total"]:
            why.append(f"{r['method']} at {r['conns']} conns: socket errors {r['socket_errors']}")
    return why


def table_rows(
    label: str, runs: list[dict[str, Any]], ceiling: list[dict[str, Any]]
) -> list[tuple[str, ...]]:
    """Table rows: one per connection count, with the ratio to the /healthz
    run at the same count."""
    by_conns = {r["conns"]: r for r in ceiling}
    out: list[tuple[str, ...]] = []
    for r in runs:
        top = by_conns.get(r["conns"])
        ratio = r["per_s"] / top["per_s"] if top and top["per_s"] else None
        out.append(
            (
                f"{label}, {r['conns']} conns",
                fmt(r["per_s"]),
                fmt(r["p50_ms"], 2),
                fmt(r["p99_ms"], 2),
                str(r["requests"]),
                str(r["non2xx_total"] + r["socket_errors_total"]),
                "-" if ratio is None else f"{ratio:.2f}",
            )
        )
    return out


def sweeps(st: Any, a: SimpleNamespace, wrk_bin: str, keys: str) -> dict[str, Any]:
    """The wrk sweeps, interleaved by connection count: /healthz, POST to this
    tree's API, then (``--before``) /healthz and POST of the API of that ref."""
    conns = [int(x) for x in a.wrk_conns.split(",") if x.strip()]
    with before_api(st, a.before, a.log_level, keys) as old_url:
        urls = {"healthz": f"{st.api_url}/healthz", "post": f"{st.api_url}/v1/jobs"}
        if old_url:
            urls["healthz_before"] = f"{old_url}/healthz"
            urls["post_before"] = f"{old_url}/v1/jobs"
        for url in urls.values():  # warm-up: connections, the SDK's models, caches
            method = "GET" if url.endswith("/healthz") else "POST"
            run(wrk_bin, url, 8, 2, method=method, api_key=API_KEY)
        out: dict[str, Any] = {name: [] for name in urls}
        for n in conns:
            for name, url in urls.items():
                method = "GET" if name.startswith("healthz") else "POST"
                print(f"wrk: {name}, {n} connections, {a.wrk_seconds:g} s", flush=True)
                out[name].append(
                    run(wrk_bin, url, n, a.wrk_seconds, method=method, api_key=API_KEY)
                )
    out["invalid"] = [w for name in urls for w in invalid(out[name])]
    best = max(out["post"], key=lambda r: r["per_s"])
    out["best_post"] = {"conns": best["conns"], "per_s": best["per_s"], "p99_ms": best["p99_ms"]}
    out["before_ref"] = a.before
    return out


@contextlib.contextmanager
def before_api(st: Any, ref: str, log_level: str, keys: str) -> Iterator[str]:
    """An API process from git ``ref`` (its tree from ``git archive``) on the
    stack's Redis and simulator; yields its URL ("" without a ref)."""
    if not ref:
        yield ""
        return
    with tempfile.TemporaryDirectory(prefix="intake-before-") as tmp:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        hide_new_dependencies(Path(tmp))
        env = {"INTERQ_REDIS_URL": st.redis_url, "INTERQ_UPSTREAM_URL": st.sim_url}
        env |= {"INTERQ_API_KEYS": keys, "INTERQ_LOG_LEVEL": log_level}
        old = harness.Stack(extra_env=env, cwd=tmp, log_dir=st.log_dir)
        with old:
            url = old.start_api(name="api-before")
            print(f"before: the API of {ref} at {url}", flush=True)
            yield url


def hide_new_dependencies(tree: Path) -> None:
    """uvloop and httptools, which uvicorn picks up when they are installed,
    made unimportable for an old tree that did not pin them (a package of that
    name on its path that raises ImportError): it runs as it did, on asyncio
    and h11."""
    lock = (tree / "requirements.lock").read_text()
    for name in ("uvloop", "httptools"):
        if f"\n{name}==" not in lock:
            (tree / name).mkdir()
            (tree / name / "__init__.py").write_text(
                f"raise ImportError('{name} is not a dependency of this tree')\n"
            )


def report(w: dict[str, Any]) -> str:
    head = (
        "what (wrk, 1 thread)",
        "req/s",
        "p50 ms",
        "p99 ms",
        "requests",
        "non-2xx",
        "x its healthz",
    )
    rows = [head, *table_rows("GET /healthz (ceiling)", w["healthz"], w["healthz"])]
    rows += table_rows("POST /v1/jobs", w["post"], w["healthz"])
    if "post_before" in w:
        ref = w["before_ref"]
        before = w["healthz_before"]
        rows += table_rows(f"before ({ref}): GET /healthz", before, before)
        rows += table_rows(f"before ({ref}): POST /v1/jobs", w["post_before"], before)
    b = w["best_post"]
    lines = [
        table(rows),
        f"best POST: {b['per_s']:.0f}/s at {b['conns']} conns, p99 {b['p99_ms']:.1f} ms",
    ]
    lines += [f"INVALID: {why}" for why in w["invalid"]]
    return "\n".join(lines)
