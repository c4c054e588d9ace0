"""Fault injection: which fault (if any) a request draws, the sliding-window
quota, and the responses each fault produces (google-shaped 429 and 5xx
bodies, a stalled answer, a connection dropped mid-response).

One draw from ``random.Random(seed)`` per request of an op in
``SimConfig.fault_ops``, so a seed replays the same sequence."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from datetime import datetime, timedelta
from datetime import time as dt_time
from zoneinfo import ZoneInfo

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from jobs.dev.simulator.config import SimConfig
from jobs.dev.simulator.wire import (
    JSON,
    QUOTA_FAILURE,
    QUOTA_FAILURE_PER_DAY,
    error_body,
    retry_info,
)

PACIFIC = ZoneInfo("America/Los_Angeles")  # where the API's daily quotas reset


class SimulatedDrop(httpx.RemoteProtocolError):
    """Raised after the response start to abort the connection (drop fault)."""


class DropResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise SimulatedDrop("simulated dropped connection")


class QuietDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for every simulated drop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


QUIET_DROPS = QuietDrops()


class Faults:
    """The seeded draws and the quota window of one simulator."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.rng = random.Random(self.config.seed)
        self._quota: deque[float] = deque()
        self._day, self._day_count = "", 0  # creates counted toward quota_rpd

    def roll(self, op: str) -> str | None:
        c = self.config
        if op not in c.fault_ops:
            return None
        r, acc = self.rng.random(), 0.0
        for name, p in (
            ("429", c.fault_429),
            ("5xx", c.fault_5xx),
            ("timeout", c.fault_timeout),
            ("drop", c.fault_drop),
        ):
            acc += p
            if r < acc:
                return name
        return None

    def quota_delay(self, now: float) -> float | None:
        rpm, window = self.config.quota_rpm, self.config.quota_window_s
        if rpm is None:
            return None
        while self._quota and self._quota[0] <= now - window:
            self._quota.popleft()
        if len(self._quota) >= rpm:
            return self._quota[0] + window - now
        self._quota.append(now)
        return None

    def error_for(self, fault: str | None, entry: JSON) -> tuple[JSON, int] | None:
        """(body, status) of a 429 or 5xx fault, else None."""
        if fault == "429":
            delay = self.config.retry_delay_s
            entry["retry_delay_s"] = delay
            msg = "Resource has been exhausted (e.g. check quota)."
            return error_body(429, msg, details=[retry_info(delay)]), 429
        if fault == "5xx":
            code = 500 if self.rng.random() < 0.5 else 503
            msg = "Internal error encountered." if code == 500 else "The model is overloaded."
            return error_body(code, msg), code
        return None

    def daily_quota_error(self, entry: JSON) -> tuple[JSON, int] | None:
        """(body, status) of a create past ``quota_rpd`` today (Pacific), else None."""
        rpd = self.config.quota_rpd
        if rpd is None:
            return None
        now = datetime.now(PACIFIC)
        today = now.date().isoformat()
        if self._day != today:
            self._day, self._day_count = today, 0
        if self._day_count < rpd:
            self._day_count += 1
            return None
        midnight = datetime.combine(now.date() + timedelta(days=1), dt_time(), PACIFIC)
        delay = (midnight - now).total_seconds()
        entry.update(fault="quota_day", retry_delay_s=delay)
        msg = "You exceeded your current quota: requests per day for this model."
        return error_body(429, msg, details=[QUOTA_FAILURE_PER_DAY, retry_info(delay)]), 429

    def quota_error(self, now: float, entry: JSON) -> tuple[JSON, int] | None:
        """(body, status) of a create over ``quota_rpm``, else None."""
        delay = self.quota_delay(now)
        if delay is None:
            return None
        entry.update(fault="quota", retry_delay_s=delay)
        msg = "You exceeded your current quota, please check your plan and billing details."
        return error_body(429, msg, details=[QUOTA_FAILURE, retry_info(delay)]), 429

    async def before(
        self, fault: str | None, request: Request, op: str, entry: JSON
    ) -> Response | None:
        """Apply a drop or timeout fault ahead of the operation (unless a create
        has ``faults_after_create``); a Response ends the request."""
        if op == "create" and self.config.faults_after_create:
            return None
        if fault == "drop":
            return DropResponse()
        if fault == "timeout":
            await asyncio.sleep(self.config.slow_s)
            if op == "create" and await request.is_disconnected():
                entry["status"] = 499  # client gave up before anything was created
                return Response(status_code=499)
        return None

    async def after(self, fault: str | None) -> Response | None:
        """Apply a drop or timeout fault after the operation ran. A drop gets
        here only for a create with ``faults_after_create``; a timeout sleeps
        here in every case (so one drawn ahead of the operation sleeps twice,
        as it always has)."""
        if fault == "drop":
            return DropResponse()
        if fault == "timeout":
            await asyncio.sleep(self.config.slow_s)
        return None
