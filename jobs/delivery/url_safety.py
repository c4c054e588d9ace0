"""Webhook URLs that may only reach the public internet.

A URL is checked for syntax at intake and resolved again before every attempt:
every address it resolves to must be public (``is_public``), unless it falls in
``INTERQ_WEBHOOK_ALLOWED_NETWORKS``. The sender then connects to the checked
address (the name kept in the Host header and SNI), so a DNS answer that
changes between check and connect cannot redirect it. A refused URL raises
``UnsafeURL`` (``jobs/errors.py``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from jobs.errors import UnsafeURL

__all__ = ["Policy", "UnsafeURL", "is_public", "resolve"]


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
