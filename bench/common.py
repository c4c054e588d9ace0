"""Shared plumbing for the benchmarks: ``jobs.dev.harness`` (a private
redis-server, the simulator, the API and workers as real processes on loopback,
torn down at exit) with the few bench extras, figures and tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import typer

from jobs.dev import harness
from jobs.dev.harness import ROOT as ROOT
from jobs.dev.harness import Proc as Proc
from jobs.dev.harness import free_port as free_port

RESULTS = ROOT / "bench" / "results"


def wait_http(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Stack(harness.Stack):
    """The dev harness plus the simulator's control endpoints."""

    def sim_config(self, **cfg: Any) -> None:
        httpx.post(f"{self.sim_url}/_sim/config", json=cfg, timeout=10).raise_for_status()

    def sim_reset(self) -> None:
        httpx.post(f"{self.sim_url}/_sim/reset", timeout=10).raise_for_status()

    def sim_stats(self) -> dict[str, Any]:
        r = httpx.get(f"{self.sim_url}/_sim/stats", timeout=60)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def stop_proc(self, p: Proc) -> None:
        """SIGTERM one child (it drains) and wait for it; SIGKILL after 20 s."""
        self.kill(p.name, signal.SIGTERM, timeout=20)


@contextlib.contextmanager
def stack(
    workers: int = 1,
    api: bool = True,
    api_port: int | None = None,
    api_log_level: str = "WARNING",
    env: Mapping[str, str] | None = None,
    **interq_env: str,
) -> Iterator[Stack]:
    """redis-server + simulator (+ API + workers) with INTERQ_* overrides (``env``
    and/or keyword arguments); the processes' output goes to $BENCH_LOG_DIR/<name>.log
    when that is set, else to a temporary folder removed at exit. The API logs at
    ``api_log_level``."""
    log_dir = os.environ.get("BENCH_LOG_DIR") or True
    st = Stack(extra_env={**(env or {}), **interq_env}, log_dir=log_dir)
    with st:
        st.start_redis()
        st.start_simulator()
        if api:  # WARNING, as uvicorn --log-level warning: no access log line per request
            st.start_api(port=api_port, INTERQ_LOG_LEVEL=api_log_level)
        for i in range(workers):
            st.start_worker(f"worker-{i}")
        yield st


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    """Write a run's figures to ``bench/results/NAME.json``; a ``--quick`` run
    (``data["args"]["quick"]``) goes to ``bench/results/quick/`` (not committed),
    so that a smoke run never overwrites the committed results."""
    quick = bool((data.get("args") or {}).get("quick"))
    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
# (added for intake / pipeline / inflight / polling; the functions above are unchanged)

ARQ_HEALTH_SUFFIX = ":health-check"


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def proc_mem_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak resident set) of a process, in MB."""
    out = {"rss_mb": 0.0, "hwm_mb": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "hwm_mb"] = int(rest.split()[0]) / 1024
    return out


class MemSampler:
    """Samples a process's VmRSS every ``every`` s in a thread (bounded count)."""

    def __init__(self, pid: int, every: float = 1.0, max_samples: int = 10_000) -> None:
        import threading

        self.pid, self.every, self.max_samples = pid, every, max_samples
        self.samples: list[tuple[float, float]] = []  # (seconds since start, rss MB)
        self.hwm_mb = 0.0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            m = proc_mem_mb(self.pid)
            if m["rss_mb"]:
                self.samples.append((round(time.monotonic() - self._t0, 2), round(m["rss_mb"], 1)))
                self.hwm_mb = max(self.hwm_mb, m["hwm_mb"])
            self._stop.wait(self.every)

    def stop(self) -> dict[str, Any]:
        """Stop sampling (call while the process is still alive) and summarise."""
        final = proc_mem_mb(self.pid)
        self._stop.set()
        self._thread.join(5)
        rss = [r for _, r in self.samples]
        return {
            "peak_rss_sampled_mb": max(rss, default=0.0),
            "vm_hwm_mb": max(self.hwm_mb, final["hwm_mb"]),
            "final_rss_mb": final["rss_mb"],
            "samples": self.samples[:: max(1, len(self.samples) // 200)],
        }


def wait_until(pred: Any, timeout: float, every: float = 0.1, what: str = "condition") -> float:
    """Poll ``pred()`` until true; returns the seconds waited. Raises on timeout."""
    t0 = time.monotonic()
    end = t0 + timeout
    while time.monotonic() < end:
        if pred():
            return time.monotonic() - t0
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def sync_redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def arq_ready(redis_url: str, queue: str) -> Callable[[Proc], bool]:
    """A readiness check for an arq worker: it writes ``<queue>:health-check`` on
    its first loop iteration, after its on_startup."""

    def ready(p: Proc) -> bool:
        r = sync_redis(redis_url)
        try:
            return bool(r.exists(queue + ARQ_HEALTH_SUFFIX))
        finally:
            r.close()

    return ready


def start_arq_worker(st: Stack, name: str, cmd: list[str], queue: str) -> Proc:
    """A bare arq worker (a baseline) as one of the stack's children, ready to work."""
    r = sync_redis(st.redis_url)
    r.delete(queue + ARQ_HEALTH_SUFFIX)
    r.close()
    return st.add(name, cmd, ready=arq_ready(st.redis_url, queue))


def sim_requests(st: Stack) -> list[dict[str, Any]]:
    """The simulator's request log: one entry per request, ``t`` = time.time() on arrival,
    ``op``, ``id`` (interaction id), ``status``, ``job`` (the ``interq_job`` label)."""
    r = httpx.get(f"{st.sim_url}/_sim/requests", timeout=300)
    r.raise_for_status()
    data: list[dict[str, Any]] = r.json()
    return data


def interactions_from_log(log: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per interaction id: ``created`` (time the create reached the simulator, which is
    when its clock starts, to well under a millisecond), ``job`` label and sorted ``gets``
    (arrival times of every GET answered 200)."""
    out: dict[str, dict[str, Any]] = {}
    for e in log:
        if e["op"] == "create" and e["status"] == 200 and e["id"]:
            out.setdefault(e["id"], {"gets": []}).update(created=e["t"], job=e["job"])
    for e in log:
        if e["op"] == "get" and e["status"] == 200 and e["id"] in out:
            out[e["id"]]["gets"].append(e["t"])
    for v in out.values():
        v["gets"].sort()
    return out


def run_arq_worker(
    functions: list[Any],
    redis_url: str,
    queue: str,
    max_jobs: int,
    poll_delay: float,
    on_startup: Any = None,
    on_shutdown: Any = None,
    job_timeout: float = 300,
) -> None:
    """Run a bare arq worker in this process (for the baselines); SIGTERM stops it."""
    from arq import Worker
    from arq.connections import RedisSettings

    Worker(
        functions=functions,
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=queue,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        keep_result=0,
        job_timeout=job_timeout,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_burst_jobs=-1,
    ).run()


# --------------------------------------------------------------------------- command lines


def cli_app(command: Callable[..., Any], prog: str, doc: str | None) -> Callable[..., int]:
    """A typer command line for one function: ``app(argv)`` parses ``argv`` (default
    ``sys.argv[1:]``), runs ``command`` and returns the exit code."""
    app = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},  # -h too, as before typer
    )
    # \b before every paragraph: click prints them as written (raw, as the
    # benches' --help always was)
    app.command(help="\b\n" + (doc or "").replace("\n\n", "\n\n\b\n"))(command)

    def main(argv: list[str] | None = None) -> int:
        try:
            app(args=argv, prog_name=prog)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return 0

    return main


def options(ctx: typer.Context) -> SimpleNamespace:
    """The command's options as attributes, in the order they are declared: ``vars()``
    of it is what a bench saves as ``args``, keys in the order they always had."""
    return SimpleNamespace(**{p.name: ctx.params[p.name] for p in ctx.command.params if p.name})


def explicit(ctx: typer.Context) -> set[str]:
    """The options given on the command line (not left at their default)."""
    given = ("COMMANDLINE", "ENVIRONMENT")
    return {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") in given}


# --------------------------------------------------------------------------- jobs


def ndjson(rows: Iterable[dict[str, Any]]) -> bytes:
    """An NDJSON body: one JSON object a line."""
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def job_records(r: Any, ids: list[str]) -> dict[str, list[str | None]]:
    """Each job's ``custom_id``, ``status`` and ``finished_at``, read in one pipeline."""
    from jobs.storage.keys import Keys

    keys = Keys()
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.hmget(keys.job(jid), ["custom_id", "status", "finished_at"])
    return {
        jid: [x.decode() if x is not None else None for x in row]
        for jid, row in zip(ids, pipe.execute(), strict=True)
    }
