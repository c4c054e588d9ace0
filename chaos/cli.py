"""``python -m chaos.run``'s options (typer), one for each ``Options`` field."""

from __future__ import annotations

from dataclasses import fields, replace
from enum import StrEnum
from typing import Annotated, Any

import typer

import chaos.run
from bench.common import cli_app, explicit
from chaos.config import Options

D = Options()


class RedisStop(StrEnum):
    kill = "kill"  # SIGKILL
    term = "term"  # SIGTERM


Opt = typer.Option
Flag = bool


def command(
    ctx: typer.Context,
    jobs: Annotated[int, Opt()] = D.jobs,
    workers: Annotated[int, Opt()] = D.workers,
    kill_every: Annotated[float, Opt(help="seconds (±30%)")] = D.kill_every,
    seed: Annotated[int | None, Opt(help="random if absent; printed")] = None,
    batch_share: Annotated[float, Opt()] = D.batch_share,
    min_duration: Annotated[float, Opt()] = D.min_duration,
    max_duration: Annotated[float, Opt()] = D.max_duration,
    min_kills: Annotated[int, Opt()] = D.min_kills,
    max_kills: Annotated[int | None, Opt()] = None,
    redis_restart_after: Annotated[
        float, Opt(help="share of the jobs terminal when Redis is stopped")
    ] = D.redis_restart_after,
    redis_down: Annotated[float, Opt()] = D.redis_down_s,
    ballast_keys: Annotated[int, Opt(help="keys loaded at Redis restart")] = D.ballast_keys,
    redis_stop: Annotated[RedisStop, Opt()] = RedisStop(D.redis_stop),
    receiver_down_after: Annotated[
        float,
        Opt(help="share of the jobs' webhook events delivered when the receiver outage starts"),
    ] = D.receiver_down_after,
    receiver_down: Annotated[float, Opt()] = D.receiver_down_s,
    webhook_schedule: Annotated[str, Opt()] = D.webhook_schedule,
    late_faults: Annotated[
        Flag, Opt("--late-faults", help="a timed-out create is created anyway (its answer lost)")
    ] = False,
    allow_failed: Annotated[Flag, Opt("--allow-failed", help="failed jobs are not a loss")] = False,
    timeout: Annotated[float, Opt(help="whole run, seconds")] = D.timeout_s,
    stall: Annotated[float | None, Opt(help="give up after nothing moved this long")] = None,
    keep_logs: Annotated[Flag, Opt("--keep-logs")] = False,
    quiet: Annotated[Flag, Opt("--quiet")] = False,
    quick: Annotated[
        Flag,
        Opt(
            "--quick",
            help="a short run (100 jobs, 2 workers, 3 kills, 20,000 ballast keys, as in "
            "tests/test_chaos.py); options given as well override it; the summary goes to "
            "chaos/results/quick.json, not last.json",
        ),
    ] = False,
) -> None:
    given = explicit(ctx)
    values: dict[str, Any] = {k: v for k, v in ctx.params.items() if k in given or not quick}
    if "redis_stop" in values:
        values["redis_stop"] = RedisStop(values["redis_stop"]).value
    raise typer.Exit(chaos.run.execute(to_options(values, quick), quick))


RENAMED = {"redis_down": "redis_down_s", "receiver_down": "receiver_down_s"}
RENAMED |= {"timeout": "timeout_s", "stall": "stall_s"}


def to_options(values: dict[str, Any], quick: bool) -> Options:
    """``Options`` (the quick ones for --quick) with ``values`` (by option name) set."""
    names = {f.name for f in fields(Options)}
    base = D.quick() if quick else D
    return replace(
        base, **{RENAMED.get(k, k): v for k, v in values.items() if RENAMED.get(k, k) in names}
    )


app = cli_app(command, "python -m chaos.run", chaos.run.__doc__)
