"""The server commands: ``interq api``, ``worker``, ``simulator``, ``receiver``
and ``hash-key``. Each runs one part in the foreground."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobs.cli.up import API_PORT, SIM_PORT
from jobs.settings import get_settings, hash_api_key


def api(port: int = API_PORT, host: str = "127.0.0.1") -> None:
    """Run the HTTP API: uvicorn on uvloop with the httptools parser (both
    pinned dependencies; uvicorn's "auto" falls back to asyncio and h11 if one
    is missing), an access log line per request only with INTERQ_ACCESS_LOG."""
    import uvicorn

    from jobs.observe.logs import setup as setup_logs

    cfg = get_settings()
    setup_logs(cfg.log_level, cfg.log_format)
    uvicorn.run(
        "api:app",
        host=host,
        port=port,
        log_config=None,
        loop="auto",
        http="auto",
        access_log=cfg.access_log,
    )


def worker() -> None:
    """Run one worker: drains on SIGTERM; never exits on Redis trouble."""
    import asyncio

    from jobs.observe.logs import setup as setup_logs
    from worker import run_worker_forever

    cfg = get_settings()
    setup_logs(cfg.log_level, cfg.log_format)
    asyncio.run(run_worker_forever(cfg))


def simulator(port: int = SIM_PORT, host: str = "127.0.0.1") -> None:
    """Run the local Interactions API simulator."""
    from jobs.dev.simulator.app import config_from_env, serve

    serve(host=host, port=port, config=config_from_env())


def hash_key(key: str) -> None:
    """Print the sha256 form of an API key, for INTERQ_API_KEYS."""
    typer.echo(hash_api_key(key))


def receiver(
    secret: Annotated[str, typer.Option(help="the job's webhook secret, whsec_...")],
    port: int = 9000,
) -> None:
    """A webhook receiver on localhost that verifies each delivery and prints it."""
    import threading

    from jobs.dev.receiver import Delivery, Receiver

    def show(d: Delivery) -> None:
        mark = "verified" if d.verified else "BAD SIGNATURE"
        typer.echo(f"[{mark}] webhook-id={d.msg_id}")
        typer.echo(json.dumps(d.body, indent=2) if d.body else d.raw.decode(errors="replace"))

    with Receiver(secret, port=port, on_delivery=show) as r:
        typer.echo(f"listening on {r.url}", err=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
