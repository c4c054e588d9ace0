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

import asyncio
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
    secret: str | list[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers; with several secrets (a rotation under way)
    one signature per secret, space-separated, newest first."""
    ts = int(time.time()) if timestamp is None else timestamp
    keys = [secret] if isinstance(secret, str) else secret
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(k, msg_id, ts, body) for k in keys),
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


CGNAT = ipaddress.ip_network("100.64.0.0/10")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(ip: Address) -> bool:
    """False for loopback, private, link-local (cloud metadata lives there),
    CGNAT, multicast, reserved and unspecified addresses, IPv4-mapped too."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT)
    )


@dataclass(frozen=True)
class Policy:
    """Which webhook destinations are allowed (``INTERQ_WEBHOOK_*`` settings)."""

    allow_private: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def allows(self, ip: Address) -> bool:
        if self.allow_private or is_public(ip):
            return True
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        return any(plain in net for net in self.allowed_networks)


def check_syntax(url: str) -> tuple[str, int, str]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UnsafeURL("webhook url must be an absolute http(s) URL")
    if parsed.username or parsed.password:
        raise UnsafeURL("webhook url must not carry credentials")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname, port, parsed.scheme


async def resolve(url: str, policy: Policy) -> Address:
    """The address to connect to: every address the host resolves to must be
    allowed (so a name cannot mix a public and a private answer). The caller
    connects to this address, so a second DNS answer cannot differ."""
    host, port, _ = check_syntax(url)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addrs = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError):
            raise UnsafeURL(f"webhook host {host!r} does not resolve") from None
        addrs = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
    if not addrs:
        raise UnsafeURL(f"webhook host {host!r} does not resolve")
    for ip in addrs:
        if not policy.allows(ip):
            raise UnsafeURL(
                f"webhook host {host!r} resolves to a non-public address; "
                "allow it with INTERQ_WEBHOOK_ALLOWED_NETWORKS"
            )
    return addrs[0]


@dataclass
class AttemptResult:
    outcome: str  # delivered | gone | failed
    status_code: int | None
    error: str | None
    duration_s: float


async def post(
    client: httpx.AsyncClient,
    url: str,
    secrets_: list[str],
    msg_id: str,
    body: bytes,
    policy: Policy,
) -> AttemptResult:
    """One signed delivery attempt to the checked address. Redirects are not
    followed (a 3xx is a failure)."""
    start = time.perf_counter()
    try:
        ip = await resolve(url, policy)
    except UnsafeURL as e:
        return AttemptResult("failed", None, str(e), 0.0)
    target = httpx.URL(url)
    host_header = target.host if target.port is None else f"{target.host}:{target.port}"
    headers = headers_for(secrets_, msg_id, body)
    headers["host"] = host_header
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        resp = await client.post(
            target.copy_with(host=str(ip)), content=body, headers=headers, extensions=extensions
        )
    except httpx.HTTPError as e:
        return AttemptResult("failed", None, type(e).__name__, time.perf_counter() - start)
    took = time.perf_counter() - start
    if 200 <= resp.status_code < 300:
        return AttemptResult("delivered", resp.status_code, None, took)
    if resp.status_code == 410:
        return AttemptResult("gone", resp.status_code, "410 Gone", took)
    return AttemptResult("failed", resp.status_code, f"HTTP {resp.status_code}", took)
