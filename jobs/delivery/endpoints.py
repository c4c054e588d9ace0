"""Where an event goes and with which secrets.

A job (or batch) may carry its own webhook ``{url, secret}``; otherwise its
tenant's default endpoint is used (``PUT /v1/webhook-endpoint``). A tenant
endpoint's secret can be rotated: for ``INTERQ_WEBHOOK_ROTATION_OVERLAP_S``
after a rotation every delivery carries two signatures, new and old, so a
receiver still holding the old secret keeps verifying while it updates.

Key: ``{p}:endpoint:{tenant}`` hash: url, secret, previous_secret,
previous_until, updated_at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from jobs.delivery.signing import generate_secret
from jobs.domain.records import Batch, Fields, Job
from jobs.services import Services

EXISTS_CACHE_S = 5.0


@dataclass
class Target:
    url: str
    secrets: list[str]  # newest first


def endpoint_key(svc: Services, tenant: str) -> str:
    return svc.store.keys.endpoint(tenant)


async def get_endpoint(svc: Services, tenant: str) -> Fields | None:
    return await svc.store.get_hash(endpoint_key(svc, tenant))


async def has_endpoint(svc: Services, tenant: str) -> bool:
    """Whether the tenant has a default endpoint (cached a few seconds: it
    decides whether a finished job's event is worth a delivery step)."""
    cache: dict[str, tuple[float, bool]] = svc.cache.setdefault("endpoints", {})  # type: ignore[assignment]
    hit = cache.get(tenant)
    now = time.monotonic()
    if hit and now - hit[0] < EXISTS_CACHE_S:
        return hit[1]
    exists = bool(await svc.redis.exists(endpoint_key(svc, tenant)))
    cache[tenant] = (now, exists)
    return exists


async def set_endpoint(svc: Services, tenant: str, url: str, secret: str | None) -> str:
    secret = secret or generate_secret()
    await svc.redis.delete(endpoint_key(svc, tenant))
    await svc.redis.hset(  # type: ignore[misc]
        endpoint_key(svc, tenant),
        mapping={"url": url, "secret": secret, "updated_at": f"{time.time():.3f}"},
    )
    svc.cache.pop("endpoints", None)
    return secret


async def rotate(svc: Services, tenant: str) -> tuple[str, float] | None:
    """A new secret; the old one keeps signing until the returned time."""
    ep = await get_endpoint(svc, tenant)
    if ep is None:
        return None
    new = generate_secret()
    until = time.time() + svc.settings.webhook_rotation_overlap_s
    await svc.redis.hset(  # type: ignore[misc]
        endpoint_key(svc, tenant),
        mapping={
            "secret": new,
            "previous_secret": ep["secret"],
            "previous_until": f"{until:.3f}",
            "updated_at": f"{time.time():.3f}",
        },
    )
    return new, until


async def target_for(svc: Services, owner: Job | Batch) -> Target | None:
    """The URL and signing secrets for an event of this job or batch."""
    if owner.webhook_url:
        return Target(owner.webhook_url, [owner.webhook_secret])
    ep = await get_endpoint(svc, owner.tenant)
    if ep is None:
        return None
    secrets = [ep["secret"]]
    if ep.get("previous_secret") and float(ep.get("previous_until") or 0) > time.time():
        secrets.append(ep["previous_secret"])
    return Target(ep["url"], secrets)
