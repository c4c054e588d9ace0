"""The dispatcher's per-tenant limits (``INTERQ_TENANT_LIMITS``), beside the
per-model budgets of ``budgets.py``: how many of a tenant's queued jobs may go
to the workers in this pass.

- held for its daily tokens (``jobs/domain/tenants.py``): none, until the
  day's turn or an operator's lift;
- ``in_flight``: the cap less its jobs dispatched and not ended
  (``tenants.in_flight``);
- ``creates_per_minute``: what is left of its moving window of a minute (the
  ``limits`` library, in Redis beside the models' windows), taken when the
  jobs are moved. Follow-up creates of a job already running (a continue, a
  continuation) are not dispatched and do not count.

The room of a tenant is read once per pass, then spent by each of its lanes
the pass serves (one dispatcher runs at a time, so nothing else spends it).
"""

from __future__ import annotations

from limits import RateLimitItemPerMinute

from jobs.domain import tenants
from jobs.services import Services
from jobs.work.clock import Clock

HELD_S = 1.0  # a held tenant is looked at again this often
FULL_S = 0.1  # a tenant at its in-flight cap


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
            ws = await self.svc.budgets.limiter.get_window_stats(item, "tenant_creates", tenant)
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
        per_minute = self.svc.settings.tenant_limit_for(tenant).creates_per_minute
        if per_minute is not None:
            item = RateLimitItemPerMinute(per_minute)
            await self.svc.budgets.limiter.hit(item, "tenant_creates", tenant, cost=n)
