"""The shared clients one process needs, opened once and closed once.

The worker keeps them in arq's ``ctx``; the API in ``app.state``. Nothing here
is a module global.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .limits import Budgets
from .results import ResultStore
from .settings import Settings
from .store import Store
from .upstream import UpstreamClient
from .webhooks import USER_AGENT, Policy


def redis_client(settings: Settings) -> Redis:
    """A Redis client that rides out a restart or a dropped connection."""
    client: Redis = Redis.from_url(
        settings.effective_redis_url,
        retry=RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_connect_timeout=5,
        socket_keepalive=True,
    )
    return client


@dataclass
class Services:
    settings: Settings
    redis: Redis
    store: Store
    upstream: UpstreamClient
    results: ResultStore
    http: httpx.AsyncClient  # outgoing webhooks
    budgets: Budgets
    cache: dict[str, object] = field(default_factory=dict)  # small per-process caches

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        upstream_transport: httpx.AsyncBaseTransport | None = None,
    ) -> Services:
        redis = redis_client(settings)
        return cls(
            settings=settings,
            redis=redis,
            store=Store(redis, prefix=settings.key_prefix, queue=settings.queue_name),
            upstream=UpstreamClient(settings, transport=upstream_transport),
            results=ResultStore(settings.results_url),
            http=httpx.AsyncClient(
                timeout=settings.webhook_timeout_s,
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
            ),
            budgets=Budgets(settings, redis),
        )

    @property
    def webhook_policy(self) -> Policy:
        cfg = self.settings
        return Policy(
            allow_private=cfg.webhook_allow_private,
            allowed_networks=tuple(
                ipaddress.ip_network(n, strict=False) for n in cfg.webhook_allowed_networks
            ),
        )

    async def close(self) -> None:
        await self.upstream.aclose()
        await self.http.aclose()
        await self.redis.aclose()
