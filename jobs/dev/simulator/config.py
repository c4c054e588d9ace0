"""``SimConfig``, its ``INTERQ_SIM_*`` environment form and the checks a live
update (``POST /_sim/config``) or a create body's ``webhook_config`` must pass."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field, fields
from typing import Any

from jobs.dev.simulator.wire import ERROR_STYLES, ApiError, is_http_url


@dataclass
class SimConfig:
    duration_s: float = 2.0
    api_key: str | None = None
    seed: int = 0
    fault_429: float = 0.0
    fault_5xx: float = 0.0
    fault_timeout: float = 0.0
    fault_drop: float = 0.0
    slow_s: float = 30.0
    retry_delay_s: float = 1.0
    quota_rpm: int | None = None
    quota_window_s: float = 60.0  # window length for quota_rpm (sliding)
    # creates per day before a per-day quota 429 (QuotaFailure naming a per-day
    # limit) until midnight Pacific; None: no daily quota
    quota_rpd: int | None = None
    # how error bodies look: "object" ({"error": {...}}, int code), "list" (the
    # same wrapped in a list, as seen live), "string_code" (the SDK's declared
    # schema: a string code)
    error_style: str = "object"
    fault_ops: set[str] = field(default_factory=lambda: {"create", "get", "cancel"})
    faults_after_create: bool = False
    # Project-level ("static") webhooks: every background interaction's events go
    # here unless its create body names its own ``webhook_config.uris``.
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: str | None = None  # whsec_... signing project-level ones (None: unsigned)
    # Per-request deliveries carry a JWT signed with the simulator's own key: its
    # aud (None: the URI delivered to) and lifetime.
    webhook_audience: str | None = None
    webhook_token_ttl_s: float = 300.0
    webhook_retry_s: list[float] = field(default_factory=lambda: [0.2, 0.5, 1.0])
    # GET ?stream=true (streaming.py): cut after this long, as the API does at
    # 600 s; and, when not 0, dropped after this many events of one connection
    stream_cut_s: float = 600.0
    stream_drop_after: int = 0


def config_from_env() -> SimConfig:
    """SimConfig from ``INTERQ_SIM_*`` environment variables (all optional)."""
    env, cfg = os.environ, SimConfig()
    for var, name, conv in (
        ("INTERQ_SIM_DURATION_S", "duration_s", float),
        ("INTERQ_SIM_SEED", "seed", int),
        ("INTERQ_SIM_FAULT_429", "fault_429", float),
        ("INTERQ_SIM_FAULT_5XX", "fault_5xx", float),
        ("INTERQ_SIM_FAULT_TIMEOUT", "fault_timeout", float),
        ("INTERQ_SIM_QUOTA_RPM", "quota_rpm", int),
        ("INTERQ_SIM_QUOTA_RPD", "quota_rpd", int),
        ("INTERQ_SIM_ERROR_STYLE", "error_style", str),
        ("INTERQ_SIM_STREAM_CUT_S", "stream_cut_s", float),
        ("INTERQ_SIM_STREAM_DROP_AFTER", "stream_drop_after", int),
    ):
        if env.get(var):
            setattr(cfg, name, conv(env[var]))
    urls = env.get("INTERQ_SIM_WEBHOOK_URLS", "")
    cfg.webhook_urls = [u.strip() for u in urls.split(",") if u.strip()]
    cfg.webhook_secret = env.get("INTERQ_SIM_WEBHOOK_SECRET") or None
    return cfg


def check_secret(value: Any) -> None:
    ok = isinstance(value, str) and value.startswith("whsec_")
    if ok:
        try:
            ok = bool(base64.b64decode(value.removeprefix("whsec_"), validate=True))
        except ValueError:
            ok = False
    if not ok:
        raise ApiError(400, "webhook_secret must be whsec_ followed by base64.")


def check_webhook_config(wc: Any) -> None:
    if not isinstance(wc, dict) or set(wc) - {"uris", "user_metadata"}:
        raise ApiError(400, "webhook_config must be an object with 'uris' and 'user_metadata'.")
    uris = wc.get("uris")
    if uris is not None and not (isinstance(uris, list) and all(map(is_http_url, uris))):
        raise ApiError(400, "webhook_config.uris must be a list of http(s) URIs.")
    if wc.get("user_metadata") is not None and not isinstance(wc["user_metadata"], dict):
        raise ApiError(400, "webhook_config.user_metadata must be an object.")


def check_update(data: Any) -> dict[str, Any]:
    """Validate a config update (a JSON object of ``SimConfig`` fields)."""
    if not isinstance(data, dict):
        raise ApiError(400, "config update must be a JSON object")
    bad = set(data) - {f.name for f in fields(SimConfig)}
    if bad:
        raise ApiError(400, f"unknown config fields: {sorted(bad)}")
    if data.get("error_style", "object") not in ERROR_STYLES:
        raise ApiError(400, f"error_style must be one of {sorted(ERROR_STYLES)}.")
    urls = data.get("webhook_urls", [])
    if not (isinstance(urls, list) and all(map(is_http_url, urls))):
        raise ApiError(400, "webhook_urls must be a list of http(s) URLs.")
    if data.get("webhook_secret") is not None:
        check_secret(data["webhook_secret"])
    aud = data.get("webhook_audience")
    if aud is not None and not isinstance(aud, str):
        raise ApiError(400, "webhook_audience must be a string or null.")
    if not isinstance(data.get("webhook_token_ttl_s", 0), int | float):
        raise ApiError(400, "webhook_token_ttl_s must be a number.")
    delays = data.get("webhook_retry_s", [])
    if not (isinstance(delays, list) and all(isinstance(d, int | float) for d in delays)):
        raise ApiError(400, "webhook_retry_s must be a list of numbers.")
    return data


def apply_update(cfg: SimConfig, data: dict[str, Any]) -> None:
    for k, v in data.items():
        setattr(cfg, k, set(v) if k == "fault_ops" else v)
