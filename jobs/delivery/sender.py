"""One webhook attempt: POST the signed body to the checked address, no redirects,
within the per-attempt timeout, and say what came of it (delivered, gone on a 410,
or failed with the status code or error)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from jobs.delivery.signing import headers_for
from jobs.delivery.url_safety import Policy, resolve
from jobs.errors import UnsafeURL


@dataclass
class AttemptResult:
    outcome: str  # delivered | gone | failed
    status_code: int | None
    error: str | None
    duration_s: float


def host_header(target: httpx.URL) -> str:
    """The Host header for the URL's authority: an IPv6 literal in brackets
    (``[2001:db8::1]:8443``), the port only if the URL names one."""
    host = target.host  # httpx gives an IPv6 literal without its brackets
    if ":" in host:
        host = f"[{host}]"
    return host if target.port is None else f"{host}:{target.port}"


async def post(
    client: httpx.AsyncClient,
    url: str,
    secrets_: list[str],
    msg_id: str,
    body: bytes,
    policy: Policy,
    extra_headers: dict[str, str] | None = None,
) -> AttemptResult:
    """One signed delivery attempt to the checked address. Redirects are not
    followed (a 3xx is a failure). ``extra_headers``: the trace context."""
    start = time.perf_counter()
    try:
        ip = await resolve(url, policy)
    except UnsafeURL as e:
        return AttemptResult("failed", None, str(e), 0.0)
    target = httpx.URL(url)
    headers = headers_for(secrets_, msg_id, body)
    headers["host"] = host_header(target)
    headers.update(extra_headers or {})
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
