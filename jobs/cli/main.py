"""``interq``: run the service and talk to it.

interq up          Redis (if none answers) + simulator (if no GEMINI_API_KEY)
                   + API + worker, supervised; Ctrl-C stops them all
interq api         the HTTP API (uvicorn)
interq worker      one arq worker
interq simulator   the local Interactions API
interq receiver    a webhook receiver that verifies signatures and prints events
interq hash-key    the form of an API key to put in INTERQ_API_KEYS

Talking to a running API (--url / INTERQ_API_URL, --api-key / INTERQ_API_KEY):

interq submit      submit an NDJSON file as a batch (--watch: live progress)
interq results     a batch's results as NDJSON
interq status      a batch's counts, a job, or the recent jobs
interq cancel      cancel a batch (or a job)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from jobs.cli import serve
from jobs.cli.batchfile import with_job_webhooks
from jobs.cli.output import counts_line, print_batch, print_job, print_jobs, usage_line
from jobs.cli.up import up
from jobs.delivery.signing import generate_secret
from jobs.dev.harness import redis_server_cmd
from jobs.observe.metrics import JOB_STATUSES, TERMINAL_STATUSES

__all__ = ["app", "main", "redis_server_cmd"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

DEFAULT_API_URL = "http://127.0.0.1:8000"

app.command()(up)
app.command()(serve.api)
app.command()(serve.worker)
app.command()(serve.simulator)
app.command("hash-key")(serve.hash_key)
app.command()(serve.receiver)


# --------------------------------------------------------------------------- batches
# Talking to a running API: submit / results / status / cancel.

UrlOpt = Annotated[str, typer.Option("--url", envvar="INTERQ_API_URL", help="interq API base URL")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="INTERQ_API_KEY", help="API key", show_default=False),
]
COUNT_KEYS = JOB_STATUSES
FINAL_KEYS = TERMINAL_STATUSES
WATCH_GIVE_UP_S = 60.0  # --watch tolerates an unreachable API this long


def _fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@contextmanager
def _talking_to(url: str) -> Iterator[None]:
    """Errors from the API or the network as one line and exit code 1."""
    import httpx

    from jobs.client import InterqError

    try:
        yield
    except InterqError as e:
        _fail(f"{e.message} ({e.code}, HTTP {e.status})")
    except httpx.ConnectError as e:
        _fail(f"cannot reach interq at {url} ({e or 'connection failed'})")
    except httpx.TimeoutException:
        _fail(f"interq at {url} did not answer in time")
    except httpx.InvalidURL as e:
        _fail(f"bad --url {url!r}: {e}")
    except httpx.HTTPError as e:
        _fail(f"talking to {url}: {type(e).__name__}: {e}")


def _batch_description(view: dict[str, Any], note: str = "") -> str:
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


def _watch(client: Any, batch_id: str, interval: float) -> dict[str, Any]:
    """A live progress bar (on stderr) until every job of the batch is done."""
    import httpx
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

    from jobs.client import InterqError, batch_finished

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} jobs/s" if speed else "- jobs/s", style="progress.data.speed")

    progress = Progress(
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
    failing_since: float | None = None
    with progress:
        task = progress.add_task("starting", total=None)
        while True:
            try:
                view: dict[str, Any] = client.batch(batch_id)
            except (httpx.TransportError, InterqError) as e:
                transient = not isinstance(e, InterqError) or e.status in (502, 503, 504)
                now = time.monotonic()
                failing_since = failing_since or now
                if not transient or now - failing_since > WATCH_GIVE_UP_S:
                    raise
                progress.update(task, description=f"[yellow]API unreachable, retrying ({e})[/]")
                time.sleep(interval)
                continue
            failing_since = None
            progress.update(
                task,
                total=view.get("total") or 0,
                completed=view.get("done", 0),
                description=_batch_description(view),
            )
            if batch_finished(view):
                return view
            time.sleep(interval)


def _send_batch(client: Any, file: Path, shown: Path, webhook: dict[str, Any] | None) -> Any:
    """Submit the batch; a refusal with line errors is printed per line (as
    ``shown:line: error``) and exits 1."""
    from jobs.client import InterqError

    try:
        return client.submit_batch(file, webhook=webhook)
    except InterqError as e:
        if not e.lines:
            raise
        typer.secho(f"error: batch refused: {e.message}", fg=typer.colors.RED, err=True)
        for item in e.lines:
            typer.echo(f"  {shown}:{item.get('line')}: {item.get('error')}", err=True)
        raise typer.Exit(1) from None


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="an NDJSON file, one job per line")],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="show live progress until the batch is done")
    ] = False,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="a webhook for every job of the batch (lines without their own) and for the batch",
            show_default=False,
        ),
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(help="its secret, whsec_... (generated if absent)", show_default=False),
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between polls", min=0.1)] = 1.0,
    url: UrlOpt = DEFAULT_API_URL,
    api_key: KeyOpt = None,
) -> None:
    """Submit FILE (NDJSON: custom_id, interaction, ...) as a batch; print its id."""
    from jobs.client import Client

    if not file.is_file():
        _fail(f"{file}: no such file" if not file.exists() else f"{file}: not a regular file")
    if webhook_secret and not webhook_url:
        _fail("--webhook-secret needs --webhook-url")
    webhook = {"url": webhook_url, "secret": webhook_secret or generate_secret()}
    shown = file
    with _talking_to(url), Client(url, api_key=api_key) as client, ExitStack() as stack:
        if webhook_url:
            file = stack.enter_context(with_job_webhooks(file, webhook))
        view = _send_batch(client, file, shown, webhook if webhook_url else None)
        batch_id = str(view["id"])
        typer.echo(batch_id)
        typer.echo(f"accepted {view.get('total')} jobs as batch {batch_id}", err=True)
        if webhook_url and not webhook_secret:
            typer.echo(f"webhook secret (shown only now): {webhook['secret']}", err=True)
        if not watch:
            return
        started = time.monotonic()
        try:
            final = _watch(client, batch_id, interval)
        except KeyboardInterrupt:
            typer.echo(f"stopped watching; the batch goes on (interq status {batch_id})", err=True)
            raise typer.Exit(130) from None
        typer.echo(
            f"batch {batch_id} {final.get('status')} in {time.monotonic() - started:.1f} s:"
            f" {final.get('done')}/{final.get('total')} done"
        )
        typer.echo(f"  {counts_line(final, FINAL_KEYS)}")
        typer.echo(f"  {usage_line(final)}")


@app.command()
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

    with _talking_to(url), Client(url, api_key=api_key) as client:
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
            _fail(f"cannot write {output}: {e.strerror or e}")
        finally:
            part.unlink(missing_ok=True)
        typer.echo(f"wrote {n} results to {output}", err=True)


@app.command()
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

    with _talking_to(url), Client(url, api_key=api_key) as client:
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


@app.command()
def cancel(
    target: Annotated[str, typer.Argument(metavar="ID", help="bat_... (or a single job_...)")],
    url: UrlOpt = DEFAULT_API_URL,
    api_key: KeyOpt = None,
) -> None:
    """Cancel a batch: its queued jobs are never sent, running ones are cancelled."""
    from jobs.client import Client

    with _talking_to(url), Client(url, api_key=api_key) as client:
        if target.startswith("job_"):
            job = client.cancel(target)
            typer.echo(f"{target}: {job.get('status')}")
            return
        view = client.cancel_batch(target)
        typer.echo(f"cancel requested for {target}")
        print_batch(view)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
