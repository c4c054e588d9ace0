"""The shared clients one process needs, opened once and closed once.

The worker keeps them in arq's ``ctx``; the API in ``app.state``. Nothing here
is a module global.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.delivery.signing import USER_AGENT
from jobs.delivery.url_safety import Policy, Resolver
from jobs.settings import Settings
from jobs.storage.results import ResultStore
from jobs.storage.store import Store
from jobs.upstream.client import UpstreamClient
from jobs.work.budgets import Budgets


def redis_client(
    settings: Settings, *, retries: int = 8, socket_timeout: float | None = None
) -> Redis:
    """A Redis client that rides out a restart or a dropped connection; plain,
    TLS (``rediss://``, ``INTERQ_REDIS_TLS_CA_FILE``) or through Sentinel.
    ``retries=0`` (and a ``socket_timeout``) make a probe that reports at once."""
    opts: dict[str, Any] = {
        "retry": RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 15,
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
    }
    url = urlparse(settings.effective_redis_url)
    if settings.redis_sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            settings.sentinel_hosts,
            socket_connect_timeout=5,
            password=url.password,
            db=int(url.path.lstrip("/") or 0),
            **{k: v for k, v in opts.items() if k != "socket_connect_timeout"},
        )
        master: Redis = sentinel.master_for(settings.redis_sentinel_master)
        return master
    if url.scheme == "rediss" and settings.redis_tls_ca_file:
        opts["ssl_ca_certs"] = settings.redis_tls_ca_file
    client: Redis = Redis.from_url(settings.effective_redis_url, **opts)
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
    resolver: Resolver | None = None  # webhook hosts' resolver; None: the system's (tests set one)

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
            store=Store(
                redis,
                prefix=settings.key_prefix,
                queue=settings.queue_name,
                retention_s=settings.retention_s,
            ),
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
            resolver=self.resolver,
        )

    async def close(self) -> None:
        await self.upstream.aclose()
        await self.http.aclose()
        # through Sentinel, each sentinel's own client has connections of its own
        sentinel = getattr(self.redis.connection_pool, "sentinel_manager", None)
        await self.redis.aclose()
        for client in getattr(sentinel, "sentinels", ()):
            await client.aclose()
