"""Webhook URLs that may only reach the public internet.

A URL is checked at intake and resolved again before every attempt: every
address it resolves to (or the literal address it names) must be public
(``is_public``), unless it falls in ``INTERQ_WEBHOOK_ALLOWED_NETWORKS``. The
sender then connects to the checked address (the name kept in the Host header
and SNI), so a DNS answer that changes between check and connect cannot
redirect it. A refused URL raises ``UnsafeURL`` (``jobs/errors.py``).

Public means not loopback, private, link-local (cloud metadata lives there),
CGNAT, multicast, reserved or unspecified, and for IPv6 also:

- not site-local (``fec0::/10``, deprecated but still routed by some networks)
  and not the local-use NAT64 prefix (``64:ff9b:1::/48``), whatever they hold;
- an address that stands for an IPv4 one is judged by that IPv4 address:
  IPv4-mapped ``::ffff:a.b.c.d`` and the well-known NAT64 prefix
  ``64:ff9b::/96`` (a NAT64 gateway connects to the embedded address);
- an address that embeds IPv4 addresses must be public itself and embed only
  public ones: 6to4 (``2002::/16``), Teredo (``2001::/32``: its server and its
  client), IPv4-compatible ``::a.b.c.d``. ``ipaddress`` calls some of these
  global whatever they embed (``2002:7f00:1::`` is 127.0.0.1 by 6to4).

The resolver is the system's (``getaddrinfo``) unless a ``Policy`` names one
(tests do, to make a name resolve to chosen addresses).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from jobs.errors import UnsafeURL

__all__ = ["Policy", "Resolver", "UnsafeURL", "embedded_ipv4", "is_public", "resolve"]


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> addresses

CGNAT = ipaddress.ip_network("100.64.0.0/10")
SITE_LOCAL = ipaddress.ip_network("fec0::/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
LOW32 = 0xFFFF_FFFF


def _plain_public(ip: Address) -> bool:
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT)
    )


def translated(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, NAT64 well-known
    prefix), or None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & LOW32)
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address the IPv6 address carries: mapped, NAT64, 6to4, both
    Teredo ones, IPv4-compatible."""
    out: list[ipaddress.IPv4Address] = []
    v4 = translated(ip)
    if v4 is not None:
        out.append(v4)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves
        out.append(ipaddress.IPv4Address(int(ip) & LOW32))
    return out


def is_public(ip: Address) -> bool:
    """Whether a webhook may go to ``ip`` without an allowance (module doc)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _plain_public(ip)
    if ip in SITE_LOCAL or ip in NAT64_LOCAL:
        return False
    v4 = translated(ip)
    if v4 is not None:
        return _plain_public(v4)
    return _plain_public(ip) and all(_plain_public(x) for x in embedded_ipv4(ip))


@dataclass(frozen=True)
class Policy:
    """Which webhook destinations are allowed (``INTERQ_WEBHOOK_*`` settings),
    and the resolver to ask (None: the system's)."""

    allow_private: bool = False
    allowed_networks: tuple[Network, ...] = ()
    resolver: Resolver | None = None

    def allows(self, ip: Address) -> bool:
        if self.allow_private or is_public(ip):
            return True
        v4 = translated(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        return any(ip in net or (v4 is not None and v4 in net) for net in self.allowed_networks)


def check_syntax(url: str) -> tuple[str, int, str]:
    try:
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:  # a port out of range, a bad IPv6 literal
        raise UnsafeURL("webhook url must be an absolute http(s) URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UnsafeURL("webhook url must be an absolute http(s) URL")
    if parsed.username or parsed.password:
        raise UnsafeURL("webhook url must not carry credentials")
    return parsed.hostname, port, parsed.scheme


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [str(i[4][0]) for i in infos]


async def addresses(host: str, port: int, policy: Policy) -> list[Address]:
    """The addresses ``host`` names: itself if it is a literal, else what the
    resolver answers (a zone index such as ``%eth0`` dropped)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = await (policy.resolver or system_resolver)(host, port)
        return [ipaddress.ip_address(a.split("%")[0]) for a in found]
    except (OSError, UnicodeError, ValueError):
        raise UnsafeURL(f"webhook host {host!r} does not resolve") from None


async def resolve(url: str, policy: Policy) -> Address:
    """The address to connect to: every address the host resolves to must be
    allowed (so a name cannot mix a public and a private answer). The caller
    connects to this address, so a second DNS answer cannot differ."""
    host, port, _ = check_syntax(url)
    addrs = await addresses(host, port, policy)
    if not addrs:
        raise UnsafeURL(f"webhook host {host!r} does not resolve")
    for ip in addrs:
        if not policy.allows(ip):
            raise UnsafeURL(
                f"webhook host {host!r} resolves to a non-public address; "
                "allow it with INTERQ_WEBHOOK_ALLOWED_NETWORKS"
            )
    return addrs[0]
