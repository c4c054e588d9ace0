"""``interq tenant``: tenants' days and their daily-tokens holds, as the
workers keep them in Redis (reads ``INTERQ_REDIS_URL``, ``INTERQ_KEY_PREFIX``
and ``INTERQ_TENANT_LIMITS`` as the workers do).

interq tenant status [TENANT]   tenants held for their daily tokens (until
                                when); with TENANT, its day: tokens, estimated
                                cost, jobs in flight, its limits
interq tenant resume TENANT     lift a tenant's hold for the rest of the day
                                (its limit was raised, or it may go on): new
                                work is accepted at once, its queued jobs are
                                dispatched within a pass and the submits
                                already waiting go within 30 s
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Annotated

import typer

from jobs.settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat()


async def _status(cfg: Settings, tenant: str | None) -> list[str]:
    from jobs.domain import tenants
    from jobs.services import Services

    svc = Services.open(cfg)
    try:
        now = time.time()
        if tenant is not None:
            return [json.dumps(await tenants.today(svc, tenant, now), indent=2)]
        held = await tenants.holds(svc, now)
    finally:
        await svc.close()
    return [f"{t}: held until {_when(until)} (daily tokens)" for t, until in held.items()] or [
        "no tenant held"
    ]


async def _resume(cfg: Settings, tenant: str) -> bool:
    from jobs.domain import tenants
    from jobs.services import Services

    svc = Services.open(cfg)
    try:
        return await tenants.lift(svc, tenant)
    finally:
        await svc.close()


@app.command()
def status(
    tenant: Annotated[str | None, typer.Argument(help="one tenant's day in detail")] = None,
) -> None:
    """Tenants held for their daily tokens, or one tenant's day."""
    for line in asyncio.run(_status(get_settings(), tenant)):
        typer.echo(line)


@app.command()
def resume(tenant: Annotated[str, typer.Argument(help="the tenant held")]) -> None:
    """Lift a tenant's daily-tokens hold for the rest of the day."""
    if asyncio.run(_resume(get_settings(), tenant)):
        typer.echo(f"{tenant}: hold lifted for today; its work goes on")
    else:
        typer.echo(f"{tenant}: not held")
