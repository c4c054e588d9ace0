"""The per-tenant limits (``INTERQ_TENANT_LIMITS``), beside the per-model
budgets of ``budgets.py``: how many of a tenant's queued jobs the dispatcher
may send to the workers in this pass, and whether a follow-up create may go.

- held for its daily tokens (``jobs/domain/tenants.py``): none, until the
  day's turn or an operator's lift;
- ``in_flight``: the cap less its jobs dispatched and not ended
  (``tenants.in_flight``);
- ``creates_per_minute``: what is left of its moving window of a minute (the
  ``limits`` library, in Redis beside the models' windows). A first create
  takes its hit when the dispatcher moves the job (``TenantGate.moved``), and
  only then. A follow-up create of a job already running (a continue, a
  continuation, a relaunch) is not dispatched: the submit step takes its hit
  right before it sends it (``take_follow_up``), and defers while the window
  is full (``follow_up_wait``), the job left as it is.

The room of a tenant is read once per pass, then spent by each of its lanes
the pass serves (one dispatcher runs at a time). Follow-ups may take some of
the window meanwhile: the pass's jobs went anyway, so the window then counts
as many of them as fit (it is full), and the tenant is over its limit by at
most the follow-ups sent during that one pass.
"""

from __future__ import annotations

import time

from limits import RateLimitItemPerMinute

from jobs.domain import tenants
from jobs.services import Services
from jobs.work.clock import Clock

HELD_S = 1.0  # a held tenant is looked at again this often
FULL_S = 0.1  # a tenant at its in-flight cap
WINDOW = "tenant_creates"  # the window's key: (WINDOW, tenant)


def window(svc: Services, tenant: str) -> RateLimitItemPerMinute | None:
    """The tenant's creates-per-minute window, or None: not limited."""
    per_minute = svc.settings.tenant_limit_for(tenant).creates_per_minute
    return None if per_minute is None else RateLimitItemPerMinute(per_minute)


async def _until_room(svc: Services, item: RateLimitItemPerMinute, tenant: str) -> float:
    """0 when the window has room, else how long until its oldest hit ages out
    (the ``limits`` window keeps real time, not a test's clock)."""
    ws = await svc.budgets.limiter.get_window_stats(item, WINDOW, tenant)
    return 0.0 if ws.remaining > 0 else max(0.01, ws.reset_time - time.time())


async def follow_up_wait(svc: Services, tenant: str) -> float:
    """For the submit step, before a follow-up takes its model token: 0 when
    the tenant's window has room (nothing taken), else how long to wait. So a
    follow-up waiting for its tenant holds none of the model's window."""
    item = window(svc, tenant)
    return 0.0 if item is None else await _until_room(svc, item, tenant)


async def take_follow_up(svc: Services, tenant: str) -> float:
    """For the submit step, right before a follow-up create is sent: one hit
    from the tenant's window. Returns 0 when taken (or the tenant has no
    such limit), else how long to wait (nothing taken)."""
    item = window(svc, tenant)
    if item is None or await svc.budgets.limiter.hit(item, WINDOW, tenant):
        return 0.0
    return max(0.01, await _until_room(svc, item, tenant))


class TenantGate:
    def __init__(self, svc: Services, clock: Clock) -> None:
        self.svc = svc
        self.clock = clock
        self.room: dict[str, tuple[int | None, float]] = {}  # this pass: tenant -> room, wait

    def new_pass(self) -> None:
        self.room = {}

    def capped(self, tenant: str) -> bool:
        """Whether the tenant's in-flight cap applies (its dispatched jobs are
        tracked for it)."""
        return self.svc.settings.tenant_limit_for(tenant).in_flight is not None

    async def allowance(self, tenant: str) -> tuple[int | None, float]:
        """How many of the tenant's jobs may go in this pass (None: no
        tenant limit), and, if none, how long to wait."""
        if tenant not in self.room:
            self.room[tenant] = await self._read(tenant)
        return self.room[tenant]

    async def _read(self, tenant: str) -> tuple[int | None, float]:
        lim = self.svc.settings.tenant_limit_for(tenant)
        if lim.tokens_per_day and await tenants.held_until(self.svc, tenant, self.clock.time()):
            return 0, HELD_S
        room: int | None = None
        if lim.in_flight is not None:
            room = max(0, lim.in_flight - await tenants.in_flight(self.svc, tenant))
            if room == 0:
                return 0, FULL_S
        if lim.creates_per_minute is not None:
            item = RateLimitItemPerMinute(lim.creates_per_minute)
            ws = await self.svc.budgets.limiter.get_window_stats(item, WINDOW, tenant)
            if ws.remaining <= 0:
                return 0, max(0.005, min(HELD_S, ws.reset_time - self.clock.time()))
            room = ws.remaining if room is None else min(room, ws.remaining)
        return room, 0.0

    async def moved(self, tenant: str, n: int) -> None:
        """``n`` of the tenant's jobs went: spend its room and its window."""
        if n <= 0 or tenant not in self.room:
            return
        room, wait = self.room[tenant]
        if room is not None:
            self.room[tenant] = (max(0, room - n), wait)
        item = window(self.svc, tenant)
        if item is None:
            return
        limiter = self.svc.budgets.limiter
        if not await limiter.hit(item, WINDOW, tenant, cost=n):
            # follow-ups took some of the room this pass read: count what fits
            left = (await limiter.get_window_stats(item, WINDOW, tenant)).remaining
            if left > 0:
                await limiter.hit(item, WINDOW, tenant, cost=min(n, left))
