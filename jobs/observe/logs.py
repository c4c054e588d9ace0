"""Structured logs: one JSON object per line, carrying the job id, interaction
id, event id and tenant of whatever step or request wrote it.

``bind(job_id=..., tenant=...)`` sets those for the current asyncio task (a
contextvar), so every log line written while handling that job carries them.
Secrets never go into logs: nothing here logs settings, headers or bodies.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FIELDS = ("job_id", "interaction_id", "event_id", "tenant", "batch_id")
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "interq_log_context", default=None
)


def bind(**fields: Any) -> None:
    """Attach fields to every log line of the current task from now on."""
    current = dict(_context.get() or {})
    current.update({k: str(v) for k, v in fields.items() if v not in (None, "")})
    _context.set(current)


def clear() -> None:
    _context.set(None)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in (_context.get() or {}).items():
            setattr(record, k, v)
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
        return True


def setup(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger (and uvicorn's and arq's) once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker", "httpx"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    if root.level > logging.DEBUG:
        # a line per HTTP request and per arq job start/finish is ~7 lines a
        # job: at INFO, interq's own lines say what happened to each job
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
