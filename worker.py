"""The worker entry point: ``interq worker`` (``run_worker_forever``), or arq's
own runner, ``arq worker.WorkerSettings``. The process itself (the arq steps, the
background loops, riding out Redis trouble, draining on SIGTERM) is
``jobs/work/runner.py``."""

from __future__ import annotations

from jobs.settings import get_settings
from jobs.work.runner import (
    background_loops,
    make_worker,
    run_worker_forever,
    stop_loops,
    worker_options,
)

__all__ = [
    "WorkerSettings",
    "background_loops",
    "make_worker",
    "run_worker_forever",
    "stop_loops",
    "worker_options",
]


class WorkerSettings:
    """For ``arq worker.WorkerSettings``: every option comes from INTERQ_ settings."""

    _opts = worker_options(get_settings())
    functions = _opts["functions"]
    redis_settings = _opts["redis_settings"]
    queue_name = _opts["queue_name"]
    max_jobs = _opts["max_jobs"]
    job_timeout = _opts["job_timeout"]
    keep_result = _opts["keep_result"]
    poll_delay = _opts["poll_delay"]
    on_startup = _opts["on_startup"]
    on_shutdown = _opts["on_shutdown"]
    job_completion_wait = _opts["job_completion_wait"]
    health_check_interval = _opts["health_check_interval"]
