"""``interq``: run the service and talk to it.

interq up          Redis (if none answers) + simulator (if no GEMINI_API_KEY)
                   + API + worker, supervised; Ctrl-C stops them all
interq api         the HTTP API (uvicorn)
interq worker      one arq worker
interq simulator   the local Interactions API
interq receiver    a webhook receiver that verifies signatures and prints events
interq hash-key    the form of an API key to put in INTERQ_API_KEYS
interq quota       per-day quota holds and the upstream key's health
                   (status; resume MODEL lifts a hold before the reset)
interq tenant      tenants held for their daily tokens, a tenant's day
                   (status [TENANT]; resume TENANT lifts a hold for the day)

Talking to a running API (--url / INTERQ_API_URL, --api-key / INTERQ_API_KEY):

interq submit      submit an NDJSON file as a batch (--watch: live progress)
interq results     a batch's results as NDJSON
interq status      a batch's counts, a job, or the recent jobs
interq cancel      cancel a batch (or a job)
"""

from __future__ import annotations

import typer

from jobs.cli import batches, quota, serve, tenant
from jobs.cli.up import up
from jobs.dev.harness import redis_server_cmd

__all__ = ["app", "main", "redis_server_cmd"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


app.command()(up)
app.command()(serve.api)
app.command()(serve.worker)
app.command()(serve.simulator)
app.command("hash-key")(serve.hash_key)
app.command()(serve.receiver)
app.command()(batches.submit)
app.command()(batches.results)
app.command()(batches.status)
app.command()(batches.cancel)
app.command()(batches.rerun)
app.add_typer(quota.app, name="quota")
app.add_typer(tenant.app, name="tenant")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
