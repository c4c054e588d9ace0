"""A batch file as ``interq submit`` sends it: with ``--webhook-url``, every job
line that has no webhook of its own gets that one (a per-line webhook needs its
own secret, so the same secret goes on each), so each job's event is delivered
there, as the option promises, besides the batch's ``batch.completed``. Lines
keep their numbers (blank and unreadable ones are copied as they are), so the
line numbers of a 422 are the file's."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def line_with_webhook(line: str, hook: dict[str, Any]) -> str:
    try:
        job = json.loads(line)
    except ValueError:
        return line  # the server names its line number
    if not isinstance(job, dict) or job.get("webhook") is not None:
        return line
    return json.dumps({**job, "webhook": hook}, separators=(",", ":")) + "\n"


@contextmanager
def with_job_webhooks(src: Path, hook: dict[str, Any]) -> Iterator[Path]:
    """A temporary copy of ``src`` whose job lines carry ``hook``."""
    with tempfile.TemporaryDirectory(prefix="interq-submit-") as tmp:
        out = Path(tmp) / src.name
        with (
            src.open(encoding="utf-8", errors="surrogateescape") as f,
            out.open("w", encoding="utf-8", errors="surrogateescape") as g,
        ):
            for line in f:
                g.write(line_with_webhook(line, hook) if line.strip() else line)
        yield out
