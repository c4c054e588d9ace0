"""The clock the step logic reads: wall time for due times, deadlines and
backoff bases, monotonic time for leases and log throttling.

Production code uses ``SYSTEM`` (the real clocks). A test passes its own
``Clock`` (an object with ``time()`` and ``monotonic()``) to ``PollEngine``,
``DeliveryEngine``, ``poll_job`` or the ``submit`` step (``ctx["clock"]``) and
advances it by hand, so the decisions can be checked without waiting.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Epoch seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class SystemClock:
    """The real clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM: Clock = SystemClock()
