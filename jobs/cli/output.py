"""How the batch commands print: one-line errors, counts, jobs, batches."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer

from jobs.observe.metrics import JOB_STATUSES, TERMINAL_STATUSES

DEFAULT_API_URL = "http://127.0.0.1:8000"


UrlOpt = Annotated[str, typer.Option("--url", envvar="INTERQ_API_URL", help="interq API base URL")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="INTERQ_API_KEY", help="API key", show_default=False),
]
COUNT_KEYS = JOB_STATUSES
FINAL_KEYS = TERMINAL_STATUSES
WATCH_GIVE_UP_S = 60.0  # --watch tolerates an unreachable API this long


def fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@contextmanager
def talking_to(url: str) -> Iterator[None]:
    """Errors from the API or the network as one line and exit code 1."""
    import httpx

    from jobs.client import InterqError

    try:
        yield
    except InterqError as e:
        fail(f"{e.message} ({e.code}, HTTP {e.status})")
    except httpx.ConnectError as e:
        fail(f"cannot reach interq at {url} ({e or 'connection failed'})")
    except httpx.TimeoutException:
        fail(f"interq at {url} did not answer in time")
    except httpx.InvalidURL as e:
        fail(f"bad --url {url!r}: {e}")
    except httpx.HTTPError as e:
        fail(f"talking to {url}: {type(e).__name__}: {e}")


def counts_line(view: dict[str, Any], keys: tuple[str, ...] = COUNT_KEYS) -> str:
    counts = view.get("counts") or {}
    return " · ".join(f"{k} {counts.get(k, 0)}" for k in keys)


def usage_line(view: dict[str, Any]) -> str:
    usage = view.get("usage") or {}
    return f"tokens: {usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out"


def ago(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    s = max(0.0, time.time() - ts)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def print_batch(view: dict[str, Any]) -> None:
    typer.echo(
        f"{view.get('id')}  {view.get('status')}  {view.get('done', 0)}/{view.get('total', 0)} done"
        f"  (created {ago(view.get('created_at'))})"
    )
    typer.echo(f"  {counts_line(view)}")
    typer.echo(f"  {usage_line(view)}")


def print_job(job: dict[str, Any]) -> None:
    typer.echo(
        f"{job.get('id')}  {job.get('status')}  custom_id={job.get('custom_id') or '-'}"
        f"  batch={job.get('batch_id') or '-'}  (created {ago(job.get('created_at'))})"
    )
    if job.get("error"):
        err = job["error"]
        typer.echo(f"  error: {err.get('code')}: {err.get('message')}")
    if job.get("output_text"):
        text = " ".join(str(job["output_text"]).split())
        typer.echo(f"  output: {text[:200]}{'…' if len(text) > 200 else ''}")


def batch_description(view: dict[str, Any], note: str = "") -> str:
    c = view.get("counts") or {}
    failed = sum(int(c.get(k, 0)) for k in ("failed", "incomplete", "expired"))
    parts = [
        f"running {c.get('running', 0)}",
        f"queued {c.get('queued', 0)}",
        f"[red]failed {failed}[/]" if failed else "failed 0",
    ]
    if c.get("requires_action"):
        parts.append(f"[yellow]action {c['requires_action']}[/]")
    if c.get("cancelled"):
        parts.append(f"cancelled {c['cancelled']}")
    if note:
        parts.append(f"[yellow]{note}[/]")
    return " · ".join(parts)


def print_jobs(jobs: list[dict[str, Any]]) -> None:
    from collections import Counter

    if not jobs:
        typer.echo("no jobs")
        return
    for j in jobs:
        typer.echo(
            f"{j.get('id')!s:<36}  {j.get('status')!s:<15}  {ago(j.get('created_at')):>8}"
            f"  {j.get('custom_id') or '-'}  {j.get('batch_id') or ''}".rstrip()
        )
    by_status = Counter(str(j.get("status")) for j in jobs)
    typer.echo(f"{len(jobs)} most recent: " + ", ".join(f"{k} {v}" for k, v in by_status.items()))
