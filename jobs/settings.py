"""All configuration, from the environment (prefix ``INTERQ_``) or a ``.env`` file.

One class, built once per process with :func:`get_settings`. A bad value stops
start-up with pydantic's message naming the variable.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from functools import lru_cache
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_UPSTREAM_URL = "https://generativelanguage.googleapis.com"
POLL_INITIAL_INTERVAL_S = 1.5
POLL_MAX_INTERVAL_S = 30.0
# Webhook retry schedule: delays between attempts, ~8 h in all, then dead letter.
WEBHOOK_SCHEDULE_S = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)


def hash_api_key(key: str) -> str:
    """The form in which API keys are stored in settings: sha256 hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class ModelLimit(BaseModel):
    """Dispatch budget for one model or agent (``*`` for any other)."""

    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(default=None, ge=1, description="creates per rate window")
    concurrency: int | None = Field(default=None, ge=1, description="interactions in flight")


class TenantLimit(BaseModel):
    """Limits for one tenant (``*`` for any tenant not named): unset means
    no limit of that kind."""

    model_config = ConfigDict(extra="forbid")
    in_flight: int | None = Field(
        default=None, ge=1, description="jobs dispatched and not ended (requires_action excluded)"
    )
    creates_per_minute: int | None = Field(
        default=None, ge=1, description="creates sent upstream per minute (first and follow-up)"
    )
    tokens_per_day: int | None = Field(
        default=None, ge=1, description="input + output + thought tokens per Pacific day"
    )


class Price(BaseModel):
    """USD per million tokens of one model or agent (``*`` for any other)."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    thought: float | None = Field(default=None, ge=0, description="unset: the output price")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INTERQ_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # --- Redis -------------------------------------------------------------
    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means redis://localhost:6379/0"
    )
    # Sentinel: "host:port,host:port" and the master's name; redis_url then
    # gives only the password and database (e.g. redis://:secret@ignored/0).
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = "mymaster"
    redis_tls_ca_file: str | None = Field(default=None, description="CA bundle for rediss://")
    queue_name: str = "interq:queue"
    key_prefix: str = "interq"

    # --- upstream (Gemini Interactions API) ---------------------------------
    upstream_url: str = DEFAULT_UPSTREAM_URL
    upstream_api_version: str = "v1beta"
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "INTERQ_GEMINI_API_KEY")
    )
    upstream_timeout_s: float = 30.0
    create_timeout_s: float = 60.0
    not_found_grace_s: float = 30.0

    # --- polling -------------------------------------------------------------
    poll_initial_s: float = POLL_INITIAL_INTERVAL_S
    poll_max_s: float = POLL_MAX_INTERVAL_S
    poll_multiplier: float = 1.5
    poll_jitter: float = 0.2
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    max_submit_attempts: int = 50
    # the poll engine (one per worker): GETs in flight, entries claimed per round
    # trip, and the lease after which a dead worker's claimed polls are due again
    poll_concurrency: int = Field(default=512, ge=1)
    poll_batch: int = Field(default=256, ge=1)
    poll_lease_s: float = Field(default=10.0, gt=0)

    # --- jobs ------------------------------------------------------------------
    default_timeout_s: float = 24 * 3600.0
    max_timeout_s: float = 7 * 24 * 3600.0
    max_body_bytes: int = 1_048_576
    idempotency_ttl_s: int = 24 * 3600
    # how long a finished job (a batch: its last job) is kept; then everything goes
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # --- watching (SSE at /v1/jobs/{id}/events, ?wait=) --------------------------
    # a comment line on an idle stream this often, and a re-read of the change
    # stream (a lost wake-up costs at most this much delay)
    watch_heartbeat_s: float = Field(default=15.0, gt=0)
    # a batch's counts are sent to each watcher at most this often (0: every change)
    watch_counts_interval_s: float = Field(default=1.0, ge=0)
    # a running job's watchers get its partial output, relayed from the upstream's
    # own stream of the interaction (jobs/http/live.py); false: status events only
    live_output: bool = True

    # --- logs ------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    # a log line per HTTP request (uvicorn's access log); off: it cost the API a
    # sixth of its POST /v1/jobs throughput
    access_log: bool = False

    # --- worker --------------------------------------------------------------
    worker_max_jobs: int = 200
    step_timeout_s: float = 60.0
    worker_poll_delay_s: float = 0.2
    worker_metrics_port: int = 9101

    # --- dispatch budgets ------------------------------------------------------
    # JSON: {"gemini-3.5-flash": {"rpm": 1200, "concurrency": 500}, "*": {...}}
    limits: dict[str, ModelLimit] = Field(default_factory=dict)
    rate_window_s: int = Field(default=60, ge=1, description="window of the rpm budgets")
    rate_safety: float = Field(default=0.98, gt=0, le=1, description="share of rpm to use")
    max_batch_jobs: int = 50_000
    batch_pause_after: int = Field(
        default=5,
        ge=0,
        description="pause a batch whose first N jobs were all refused upstream with the "
        "same 400 (0: never)",
    )
    max_batch_bytes: int = 256 * 1024 * 1024
    # a JSON batch body ({"jobs": [...]}) is parsed whole (~2.3 x its size in
    # memory, much of it kept by the allocator afterwards); NDJSON is read as a
    # stream up to max_batch_bytes
    max_json_batch_bytes: int = Field(default=32 * 1024 * 1024, ge=1)

    # --- tenant limits and prices (jobs/domain/tenants.py, jobs/domain/costs.py)
    # JSON: {"team-a": {"in_flight": 50, "creates_per_minute": 600,
    #        "tokens_per_day": 5000000}, "*": {...}}
    tenant_limits: dict[str, TenantLimit] = Field(default_factory=dict)
    # JSON, USD per million tokens: {"gemini-3-flash": {"input": 0.5, "output": 3.0,
    #        "thought": 3.0}, "*": {...}}
    prices: dict[str, Price] = Field(default_factory=dict)

    # --- results -------------------------------------------------------------
    results_url: str = "file://./data/results"

    # --- webhooks --------------------------------------------------------------
    webhook_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(WEBHOOK_SCHEDULE_S)
    )
    webhook_timeout_s: float = 10.0
    webhook_jitter: float = 0.1
    webhook_allow_private: bool = False
    # CIDRs allowed although not public, e.g. "10.1.0.0/16,127.0.0.0/8" (dev, internal hooks)
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_rotation_overlap_s: float = 24 * 3600.0
    # the delivery engine (one per worker): attempts in flight, and per destination
    # (scheme, host, port), so a slow receiver delays only its own events
    webhook_concurrency: int = Field(default=64, ge=1)
    webhook_per_destination: int = Field(default=4, ge=1)

    # --- upstream webhooks (the Gemini API calls interq when an interaction ends)
    public_url: str | None = Field(
        default=None, description="interq's public base URL, put in webhook_config.uris"
    )
    upstream_webhook_secret: SecretStr | None = None  # project-level (Standard Webhooks)
    # per-request deliveries (webhook_config.uris) carry an RS256 JWT: its keys
    # (unset: INTERQ_UPSTREAM_URL + /.well-known/jwks.json, the API's published
    # set) and the audience it must name (unset: INTERQ_PUBLIC_URL's webhook URL)
    upstream_jwks_url: str | None = None
    upstream_webhook_audience: str | None = None

    # --- intake limits -----------------------------------------------------------
    tenant_requests_per_s: int = Field(default=0, ge=0, description="0 = no limit")

    # --- create bodies ------------------------------------------------------------
    # Unknown field names in a create body pass intake (for fields newer than the
    # google-genai SDK interq checks bodies with) instead of a 422.
    forward_unknown_fields: bool = False

    # --- API auth ----------------------------------------------------------------
    # JSON object mapping tenant -> sha256 hex of its API key (`interq hash-key KEY`).
    api_keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("webhook_schedule_s", mode="before")
    @classmethod
    def _parse_schedule(cls, v: object) -> object:
        if isinstance(v, str):
            parts = [p.strip() for p in v.split(",") if p.strip()]
            return [float(p) for p in parts]
        return v

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _parse_sentinels(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, v: list[str]) -> list[str]:
        for hp in v:
            host, _, port = hp.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"sentinel {hp!r} must be host:port")
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("INTERQ_REDIS_URL must start with redis://, rediss:// or unix://")
        return v

    @property
    def sentinel_hosts(self) -> list[tuple[str, int]]:
        return [(h, int(p)) for h, _, p in (x.rpartition(":") for x in self.redis_sentinels)]

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a CIDR network") from None
        return v

    @field_validator("webhook_schedule_s")
    @classmethod
    def _check_schedule(cls, v: list[float]) -> list[float]:
        if any(d < 0 for d in v):
            raise ValueError("webhook delays must be >= 0")
        return v

    @field_validator("upstream_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("INTERQ_UPSTREAM_URL must be an http(s) URL")
        return v.rstrip("/")

    @field_validator("upstream_webhook_secret", "gemini_api_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        """A secret set to nothing (``INTERQ_UPSTREAM_WEBHOOK_SECRET=`` in a
        compose file that passes it through) is no secret: unset, not a key of
        zero bytes that anyone can sign with (or send upstream)."""
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @field_validator("upstream_jwks_url")
    @classmethod
    def _check_jwks_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("INTERQ_UPSTREAM_JWKS_URL must be an http(s) URL")
        return v

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for tenant, digest in v.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    f"INTERQ_API_KEYS[{tenant!r}] must be a sha256 hex digest "
                    "(use `interq hash-key`), not a plain key"
                )
        return v

    def limit_for(self, model: str) -> ModelLimit:
        return self.limits.get(model) or self.limits.get("*") or ModelLimit()

    def tenant_limit_for(self, tenant: str) -> TenantLimit:
        return self.tenant_limits.get(tenant) or self.tenant_limits.get("*") or TenantLimit()

    def price_for(self, model: str) -> Price | None:
        return self.prices.get(model) or self.prices.get("*")

    @property
    def known_tenants(self) -> frozenset[str]:
        """Tenants named in settings (keys, limits) and the keyless one: the
        values a ``tenant`` metric label may take (any other is ``other``)."""
        named = set(self.api_keys) | (set(self.tenant_limits) - {"*"})
        return frozenset(named if self.api_keys else named | {"default"})

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    def tenant_for_key(self, key: str) -> str | None:
        digest = hash_api_key(key)
        for tenant, expected in self.api_keys.items():
            if hmac.compare_digest(digest, expected):
                return tenant
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
