"""``interq quota``: the pauses the workers keep in Redis (reads
``INTERQ_REDIS_URL`` and ``INTERQ_KEY_PREFIX`` as the workers do).

interq quota status          models held for a per-day quota (until when), and
                             whether the upstream key is refused
interq quota resume MODEL    lift a model's hold before the daily reset (the
                             quota was raised, or the 429 was wrong): its jobs
                             are dispatched again within a pass, and the
                             submits already waiting go within 30 s
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import typer

from jobs.settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


async def _status(cfg: Settings) -> list[str]:
    from jobs.services import redis_client
    from jobs.work.budgets import Budgets

    redis = redis_client(cfg, retries=0, socket_timeout=5.0)
    try:
        budgets = Budgets(cfg, redis)
        holds = await budgets.holds()
        refused = await budgets.key_unhealthy()
    finally:
        await redis.aclose()
    lines = [
        f"{model}: held until {dt.datetime.fromtimestamp(until).astimezone().isoformat()}"
        for model, until in holds.items()
    ] or ["no model held"]
    if refused:
        lines.append(f"upstream key: refused (401/403), flag expires in {refused:.0f} s")
    else:
        lines.append("upstream key: healthy")
    return lines


async def _resume(cfg: Settings, model: str) -> bool:
    from jobs.services import redis_client
    from jobs.work.budgets import Budgets

    redis = redis_client(cfg, retries=0, socket_timeout=5.0)
    try:
        return await Budgets(cfg, redis).release(model)
    finally:
        await redis.aclose()


@app.command()
def status() -> None:
    """Models held for a per-day quota, and the upstream key's health."""
    for line in asyncio.run(_status(get_settings())):
        typer.echo(line)


@app.command()
def resume(model: Annotated[str, typer.Argument(help="the model or agent held")]) -> None:
    """Lift a model's per-day quota hold before the reset."""
    if asyncio.run(_resume(get_settings(), model)):
        typer.echo(f"{model}: hold lifted; its jobs are dispatched again")
    else:
        typer.echo(f"{model}: not held")
