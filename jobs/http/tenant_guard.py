"""The 429 for a tenant over its daily tokens (``INTERQ_TENANT_LIMITS``
``tokens_per_day``, ``jobs/domain/tenants.py``): a dependency the routes that
take new work declare (``POST /v1/jobs``, ``POST /v1/batches``).

It costs nothing for a tenant without ``tokens_per_day``, and one Redis GET
(the tenant's hold) for one with it. The answer: 429 ``tenant_daily_tokens``
with ``Retry-After`` (seconds to the day's turn, midnight Pacific) and
``retry_at`` (epoch s) in the error body."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Depends

from jobs.domain import tenants
from jobs.errors import TenantDailyTokens
from jobs.http.deps import Svc, Tenant


async def within_daily_tokens(s: Svc, t: Tenant) -> None:
    limit = s.settings.tenant_limit_for(t).tokens_per_day
    if not limit:
        return
    now = time.time()
    until = await tenants.held_until(s, t, now)
    if until:
        err = tenants.over_limit_error(t, until)
        raise TenantDailyTokens(
            err["message"],
            headers={"Retry-After": str(max(1, math.ceil(until - now)))},
            retry_at=until,
            tokens_per_day=limit,
        )


DailyTokens = Annotated[None, Depends(within_daily_tokens)]
