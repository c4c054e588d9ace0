"""The batch commands: ``interq submit``, ``results``, ``status``, ``cancel``,
talking to a running API (``--url`` / INTERQ_API_URL, ``--api-key`` /
INTERQ_API_KEY) through :mod:`jobs.client`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from jobs.cli.output import (
    DEFAULT_API_URL,
    FINAL_KEYS,
    WATCH_GIVE_UP_S,
    KeyOpt,
    UrlOpt,
    batch_description,
    counts_line,
    fail,
    print_batch,
    print_job,
    print_jobs,
    talking_to,
    usage_line,
)


def _progress() -> Any:
    """The live progress bar (on stderr) of ``--watch``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} jobs/s" if speed else "- jobs/s", style="progress.data.speed")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        refresh_per_second=4,
    )


def watch_batch(client: Any, batch_id: str, interval: float) -> dict[str, Any]:
    """A live progress bar (on stderr) until the batch has ended, from its
    event stream (``GET /v1/batches/{id}/events``): no polling. A dropped
    stream is resumed where it stopped (``Last-Event-ID``), ``interval``
    seconds after a failed attempt, for up to ``WATCH_GIVE_UP_S``."""
    import httpx

    from jobs.client import InterqError

    failing_since: float | None = None
    view: dict[str, Any] = {}
    with _progress() as progress:
        task = progress.add_task("starting", total=None)
        while True:
            try:
                for update in client.watch_batch(batch_id, view.get("last_event_id")):
                    view, failing_since = {**view, **update}, None
                    progress.update(
                        task,
                        total=view.get("total") or 0,
                        completed=view.get("done", 0),
                        description=batch_description(view),
                    )
                # the stream ends after the final status and the final view
                if view.get("status") not in ("completed", "cancelled"):
                    view = {**client.batch(batch_id), "last_event_id": view.get("last_event_id")}
                if view.get("status") in ("completed", "cancelled"):
                    return view
            except (httpx.TransportError, InterqError) as e:
                transient = not isinstance(e, InterqError) or e.status in (502, 503, 504)
                now = time.monotonic()
                failing_since = failing_since or now
                if not transient or now - failing_since > WATCH_GIVE_UP_S:
                    raise
                progress.update(task, description=f"[yellow]API unreachable, retrying ({e})[/]")
            time.sleep(interval)  # before reconnecting: the stream ended or failed


def with_webhook(file: Path, out: IO[bytes], webhook: dict[str, str]) -> None:
    """Copy the NDJSON ``file`` to ``out`` with ``webhook`` on every job line
    that has none (line numbers kept: blank and unparsable lines go through
    as they are, for the API to report)."""
    with file.open("rb") as f:
        for raw in f:
            try:
                job = json.loads(raw) if raw.strip() else None
            except ValueError:
                job = None
            if isinstance(job, dict) and "webhook" not in job:
                job["webhook"] = webhook
                raw = json.dumps(job, ensure_ascii=False).encode() + b"\n"
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")


def _submit(client: Any, file: Path, hook_url: str | None, secret: str | None) -> dict[str, Any]:
    """Submit ``file``; with a webhook, every job of it gets one (the API wants
    a per-line secret: ``secret``, or one generated here) and so does the batch."""
    import tempfile

    from jobs.client import InterqError
    from jobs.delivery.signing import generate_secret

    try:
        if not hook_url:
            view: dict[str, Any] = client.submit_batch(file)
            return view
        webhook = {"url": hook_url, "secret": secret or generate_secret()}
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as tmp:
            with_webhook(file, tmp, webhook)
            tmp.flush()
            view = client.submit_batch(tmp.name, webhook=webhook)
        if not secret:
            typer.echo(f"webhook secret (shown only now): {webhook['secret']}", err=True)
        return view
    except InterqError as e:
        if not e.lines:
            raise
        typer.secho(f"error: batch refused: {e.message}", fg=typer.colors.RED, err=True)
        for item in e.lines:
            typer.echo(f"  {file}:{item.get('line')}: {item.get('error')}", err=True)
        raise typer.Exit(1) from None


def submit(
    file: Annotated[Path, typer.Argument(help="an NDJSON file, one job per line")],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="show live progress until the batch is done")
    ] = False,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="a webhook for every job of the batch (job.* events) and the batch itself",
            show_default=False,
        ),
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(help="its secret, whsec_... (generated if absent)", show_default=False),
    ] = None,
    interval: Annotated[
        float, typer.Option(help="--watch: seconds before reconnecting a dropped stream", min=0.1)
    ] = 1.0,
    url: UrlOpt = DEFAULT_API_URL,
    api_key: KeyOpt = None,
) -> None:
    """Submit FILE (NDJSON: custom_id, interaction, ...) as a batch; print its id."""
    from jobs.client import Client

    if not file.is_file():
        fail(f"{file}: no such file" if not file.exists() else f"{file}: not a regular file")
    if webhook_secret and not webhook_url:
        fail("--webhook-secret needs --webhook-url")
    with talking_to(url), Client(url, api_key=api_key) as client:
        view = _submit(client, file, webhook_url, webhook_secret)
        batch_id = str(view["id"])
        typer.echo(batch_id)
        typer.echo(f"accepted {view.get('total')} jobs as batch {batch_id}", err=True)
        if not watch:
            return
        started = time.monotonic()
        try:
            final = watch_batch(client, batch_id, interval)
        except KeyboardInterrupt:
            typer.echo(f"stopped watching; the batch goes on (interq status {batch_id})", err=True)
            raise typer.Exit(130) from None
        typer.echo(
            f"batch {batch_id} {final.get('status')} in {time.monotonic() - started:.1f} s:"
            f" {final.get('done')}/{final.get('total')} done"
        )
        typer.echo(f"  {counts_line(final, FINAL_KEYS)}")
        typer.echo(f"  {usage_line(final)}")


def results(
    batch_id: Annotated[str, typer.Argument(help="bat_...")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="write here instead of stdout", show_default=False),
    ] = None,
    url: UrlOpt = DEFAULT_API_URL,
    api_key: KeyOpt = None,
) -> None:
    """Write a batch's results as NDJSON, one line per job in input order."""
    from jobs.client import Client

    with talking_to(url), Client(url, api_key=api_key) as client:
        view = client.batch(batch_id)
        if view.get("done", 0) < view.get("total", 0):
            typer.echo(
                f"note: batch is {view.get('status')} ({view.get('done')}/{view.get('total')}"
                " done); unfinished jobs are listed with their current status",
                err=True,
            )
        lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in client.iter_results(batch_id))
        if output is None:
            try:
                for line in lines:
                    sys.stdout.write(line)
                sys.stdout.flush()
            except BrokenPipeError:  # `interq results ... | head`
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        part = output.with_name(output.name + ".part")
        n = 0
        try:
            with part.open("w", encoding="utf-8") as f:
                for line in lines:
                    f.write(line)
                    n += 1
            part.replace(output)
        except OSError as e:
            fail(f"cannot write {output}: {e.strerror or e}")
        finally:
            part.unlink(missing_ok=True)
        typer.echo(f"wrote {n} results to {output}", err=True)


def status(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="ID", help="bat_... or job_...; none: the recent jobs", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="how many recent jobs", min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    url: UrlOpt = DEFAULT_API_URL,
    api_key: KeyOpt = None,
) -> None:
    """A batch's counts (or a job's status); with no id, the recent jobs."""
    from jobs.client import Client

    with talking_to(url), Client(url, api_key=api_key) as client:
        if target is None:
            page = client.jobs(limit=limit)
            if as_json:
                typer.echo(json.dumps(page, indent=2))
            else:
                print_jobs(page.get("data") or [])
        elif target.startswith("job_"):
            job = client.get(target)
            if as_json:
                typer.echo(json.dumps(job, indent=2))
            else:
                print_job(job)
        else:
            view = client.batch(target)
            if as_json:
                typer.echo(json.dumps(view, indent=2))
            else:
                print_batch(view)


def cancel(
    target: Annotated[str, typer.Argument(metavar="ID", help="bat_... (or a single job_...)")],
    url: UrlOpt = DEFAULT_API_URL,
    api_key: KeyOpt = None,
) -> None:
    """Cancel a batch: its queued jobs are never sent, running ones are cancelled."""
    from jobs.client import Client

    with talking_to(url), Client(url, api_key=api_key) as client:
        if target.startswith("job_"):
            job = client.cancel(target)
            typer.echo(f"{target}: {job.get('status')}")
            return
        view = client.cancel_batch(target)
        typer.echo(f"cancel requested for {target}")
        print_batch(view)


def rerun(
    target: Annotated[str, typer.Argument(metavar="ID", help="bat_... (or a single job_...)")],
    status: Annotated[
        list[str] | None,
        typer.Option(help="rerun the lines in this status (repeatable; default failed, expired)"),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="an Idempotency-Key: a repeat runs nothing again")
    ] = None,
    url: UrlOpt = DEFAULT_API_URL,
    api_key: KeyOpt = None,
) -> None:
    """Run again what ended without an answer: a batch's failed and expired lines
    (they keep their custom ids and order), or one job."""
    from jobs.client import Client

    with talking_to(url), Client(url, api_key=api_key) as client:
        view = client.rerun(target, status, key)
        if target.startswith("job_"):
            typer.echo(f"{target}: {view.get('status')} (attempt {view.get('attempt')})")
            return
        typer.echo(f"{target}: {view['rerun']['rerun']} jobs queued again")
        print_batch(view)
