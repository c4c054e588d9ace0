"""``interq``: run the service and talk to it.

interq up          Redis (if none answers) + simulator (if no GEMINI_API_KEY)
                   + API + worker, supervised; Ctrl-C stops them all
interq api         the HTTP API (uvicorn)
interq worker      one arq worker
interq simulator   the local Interactions API
interq receiver    a webhook receiver that verifies signatures and prints events
interq hash-key    the form of an API key to put in INTERQ_API_KEYS
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import typer

from .settings import get_settings, hash_api_key

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

SIM_PORT = 8090
API_PORT = 8000


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _banner(msg: str) -> None:
    line = "=" * max(len(x) for x in msg.splitlines())
    typer.secho(f"{line}\n{msg}\n{line}", fg=typer.colors.YELLOW, bold=True, err=True)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="API port")] = API_PORT,
    sim_port: Annotated[int, typer.Option(help="simulator port")] = SIM_PORT,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
) -> None:
    """Start everything a local service needs; Ctrl-C stops it all cleanly."""
    env = dict(os.environ)
    children: list[tuple[str, list[str], subprocess.Popen[bytes]]] = []

    def spawn(name: str, cmd: list[str]) -> None:
        typer.secho(f"starting {name}: {' '.join(cmd)}", fg=typer.colors.GREEN, err=True)
        children.append((name, cmd, subprocess.Popen(cmd, env=env)))

    if not env.get("INTERQ_REDIS_URL"):
        if _answers("127.0.0.1", 6379):
            typer.echo("using the Redis already answering on localhost:6379", err=True)
        else:
            binary = shutil.which("redis-server")
            if binary is None:
                typer.secho(
                    "no Redis on localhost:6379 and no redis-server binary "
                    "(apt-get install redis-server)",
                    fg=typer.colors.RED,
                    err=True,
                )
                raise typer.Exit(1)
            data = Path("data/redis").resolve()
            data.mkdir(parents=True, exist_ok=True)
            spawn(
                "redis",
                [
                    binary,
                    "--port",
                    "6379",
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(data),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ],
            )
            for _ in range(100):
                if _answers("127.0.0.1", 6379):
                    break
                time.sleep(0.1)
        env["INTERQ_REDIS_URL"] = "redis://127.0.0.1:6379/0"

    if not env.get("GEMINI_API_KEY"):
        _banner(
            "NO GEMINI_API_KEY: running against the built-in SIMULATOR, not the real API.\n"
            f"Upstream = http://127.0.0.1:{sim_port}; webhooks to localhost are allowed."
        )
        env["INTERQ_UPSTREAM_URL"] = f"http://127.0.0.1:{sim_port}"
        env.setdefault("INTERQ_WEBHOOK_ALLOW_PRIVATE", "true")
        spawn("simulator", [sys.executable, "-m", "jobs.cli", "simulator", "--port", str(sim_port)])
    spawn(
        "api",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
    )
    for i in range(workers):
        env_i = {**env, "INTERQ_WORKER_METRICS_PORT": str(9101 + i)}
        typer.secho(f"starting worker {i}", fg=typer.colors.GREEN, err=True)
        cmd = [sys.executable, "-m", "jobs.cli", "worker"]
        children.append((f"worker-{i}", cmd, subprocess.Popen(cmd, env=env_i)))
    typer.secho(
        f"interq is up: http://127.0.0.1:{port}/docs  (Ctrl-C to stop)",
        fg=typer.colors.GREEN,
        bold=True,
        err=True,
    )
    _supervise(children, env)


def _supervise(
    children: list[tuple[str, list[str], subprocess.Popen[bytes]]], env: dict[str, str]
) -> None:
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        for i, (name, cmd, proc) in enumerate(children):
            if proc.poll() is not None and not stopping:
                typer.secho(
                    f"{name} exited ({proc.returncode}); restarting", fg=typer.colors.RED, err=True
                )
                children[i] = (name, cmd, subprocess.Popen(cmd, env=env))
        time.sleep(0.5)
    typer.echo("stopping...", err=True)
    for _name, _cmd, proc in reversed(children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=70)
        except subprocess.TimeoutExpired:
            proc.kill()
    typer.echo("stopped", err=True)


@app.command()
def api(port: int = API_PORT, host: str = "127.0.0.1") -> None:
    """Run the HTTP API."""
    import uvicorn

    uvicorn.run("api:app", host=host, port=port)


@app.command()
def worker() -> None:
    """Run one worker (drains on SIGTERM)."""
    import logging

    from worker import make_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    make_worker(get_settings()).run()


@app.command()
def simulator(port: int = SIM_PORT, host: str = "127.0.0.1") -> None:
    """Run the local Interactions API simulator."""
    from .simulator import config_from_env, serve

    serve(host=host, port=port, config=config_from_env())


@app.command("hash-key")
def hash_key(key: str) -> None:
    """Print the sha256 form of an API key, for INTERQ_API_KEYS."""
    typer.echo(hash_api_key(key))


@app.command()
def receiver(
    secret: Annotated[str, typer.Option(help="the job's webhook secret, whsec_...")],
    port: int = 9000,
) -> None:
    """A webhook receiver on localhost that verifies each delivery and prints it."""
    from .webhooks import verify

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            ok = verify(secret, dict(self.headers.items()), raw)
            self.send_response(204 if ok else 400)
            self.end_headers()
            mark = "verified" if ok else "BAD SIGNATURE"
            typer.echo(f"[{mark}] webhook-id={self.headers.get('webhook-id')}")
            typer.echo(json.dumps(json.loads(raw), indent=2))

        def log_message(self, *args: Any) -> None:
            pass

    typer.echo(f"listening on http://127.0.0.1:{port}/hook", err=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
