"""Outgoing webhooks in the Standard Webhooks format.

Headers: ``webhook-id`` (the event id, stable across retries),
``webhook-timestamp`` (unix seconds of this attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`` where
key is the base64-decoded part of a ``whsec_`` secret. A receiver using the
``standardwebhooks`` library verifies these unchanged.

The schedule (``INTERQ_WEBHOOK_SCHEDULE_S``) lists the delays between
attempts; after the last one the event is dead-lettered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

USER_AGENT = "interq-webhooks/0.1"


def generate_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers_for(
    secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """Check a Standard Webhooks delivery: any ``v1,`` signature matches and
    the timestamp is within ``tolerance_s`` of now."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and sigs):
        return False
    try:
        stamp = int(ts)
    except ValueError:
        return False
    if abs(time.time() - stamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, stamp, body)
    return any(hmac.compare_digest(expected, s) for s in sigs.split() if s.startswith("v1,"))


def next_delay(schedule: list[float], attempt: int, jitter: float) -> float | None:
    """Delay before attempt number ``attempt + 1`` (attempt counts from 1), or
    None when the schedule is exhausted."""
    if attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    return base * (1 + random.uniform(-jitter, jitter))


class UnsafeURL(ValueError):
    pass


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    cgnat = ipaddress.ip_network("100.64.0.0/10")
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in cgnat)
    )


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse URLs that are not http(s), or whose host resolves to a
    loopback/private/link-local/metadata address (unless allowed)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UnsafeURL("webhook url must be an absolute http(s) URL")
    if parsed.username or parsed.password:
        raise UnsafeURL("webhook url must not carry credentials")
    if allow_private:
        return
    host = parsed.hostname
    try:
        infos = socket.getaddrinfo(host, parsed.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise UnsafeURL(f"webhook host {host!r} does not resolve") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not _is_public(ip):
            raise UnsafeURL(f"webhook host {host!r} resolves to a non-public address")


@dataclass
class AttemptResult:
    outcome: str  # delivered | gone | failed
    status_code: int | None
    error: str | None
    duration_s: float


async def post(
    client: httpx.AsyncClient, url: str, secret: str, msg_id: str, body: bytes
) -> AttemptResult:
    start = time.perf_counter()
    try:
        resp = await client.post(url, content=body, headers=headers_for(secret, msg_id, body))
    except httpx.HTTPError as e:
        return AttemptResult("failed", None, type(e).__name__, time.perf_counter() - start)
    took = time.perf_counter() - start
    if 200 <= resp.status_code < 300:
        return AttemptResult("delivered", resp.status_code, None, took)
    if resp.status_code == 410:
        return AttemptResult("gone", resp.status_code, "410 Gone", took)
    return AttemptResult("failed", resp.status_code, f"HTTP {resp.status_code}", took)
