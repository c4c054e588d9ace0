"""What the batch commands print: counts, usage, a batch, a job, a list of jobs."""

from __future__ import annotations

import time
from typing import Any

import typer

from jobs.observe.metrics import JOB_STATUSES

COUNT_KEYS = JOB_STATUSES


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
