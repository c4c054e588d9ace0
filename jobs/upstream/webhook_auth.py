"""Checking that a call to ``POST /v1/upstream/webhook`` comes from the Gemini
API (reference section 9). Two kinds of delivery share the endpoint (the route,
``jobs/http/routes/upstream.py``, tells them apart with :func:`jwt_in`):

* project-level webhooks, signed in the Standard Webhooks format (HMAC-SHA256,
  ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature: v1,...``) with
  ``INTERQ_UPSTREAM_WEBHOOK_SECRET``, checked by ``jobs.delivery.signing``;
* per-request webhooks (the ``webhook_config.uris`` interq puts in each create
  when ``INTERQ_PUBLIC_URL`` is set), whose ``Webhook-Signature`` header is an
  RS256 JWT: the key is the one its ``kid`` names in the API's JWKS
  (``INTERQ_UPSTREAM_JWKS_URL``), ``exp`` is required and must not have passed,
  and ``aud`` must be ``INTERQ_UPSTREAM_WEBHOOK_AUDIENCE`` (unset: interq's own
  webhook URL, the URI the create named). Other claims are not checked: their
  layout is not documented. This module checks these.

The key set is fetched with httpx on the event loop, cached for
``JWKS_LIFESPAN_S`` and fetched again, at most once per ``JWKS_COOLDOWN_S``,
when a token names a ``kid`` the cache does not hold (a key rotation). A
delivery that fails a check raises ``InvalidWebhook`` (400); a key set that
cannot be fetched with none cached raises ``Unavailable`` (503), so the API
delivers again later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

from jobs.errors import InvalidWebhook, Unavailable
from jobs.settings import Settings

log = logging.getLogger("interq.upstream.webhooks")

WEBHOOK_PATH = "/v1/upstream/webhook"
JWKS_PATH = "/.well-known/jwks.json"
JWKS_LIFESPAN_S = 300.0  # a cached key set is fetched again after this
JWKS_COOLDOWN_S = 30.0  # at most one fetch per this for unknown kids
JWKS_TIMEOUT_S = 10.0
LEEWAY_S = 30  # clock skew allowed on exp / iat / nbf


def audience_for(settings: Settings) -> str | None:
    """The ``aud`` a per-request delivery must carry, or None (not configured)."""
    if settings.upstream_webhook_audience:
        return settings.upstream_webhook_audience
    if settings.public_url:
        return settings.public_url.rstrip("/") + WEBHOOK_PATH
    return None


def jwks_url_for(settings: Settings) -> str:
    return settings.upstream_jwks_url or settings.upstream_url + JWKS_PATH


def jwt_in(signature: str) -> str | None:
    """The JWT in a signature header, or None for a Standard Webhooks one."""
    value = signature.strip().removeprefix("Bearer ").strip()
    if value.count(".") != 2 or "," in value or " " in value:
        return None
    return value


class JwksCache:
    """The upstream's public keys by ``kid``, fetched when first needed."""

    def __init__(
        self,
        url: str,
        *,
        lifespan_s: float = JWKS_LIFESPAN_S,
        cooldown_s: float = JWKS_COOLDOWN_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.lifespan_s, self.cooldown_s = lifespan_s, cooldown_s
        self._transport = transport
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at = 0.0  # monotonic time of the last fetch (or failed fetch)
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        async with self._lock:  # one fetch at a time; cached lookups do not wait on I/O
            age = time.monotonic() - self._fetched_at
            if self._keys is None or age > self.lifespan_s:
                await self._refresh()
            elif kid not in self._keys and age > self.cooldown_s:
                await self._refresh()
            assert self._keys is not None
            return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            async with httpx.AsyncClient(
                transport=self._transport, timeout=JWKS_TIMEOUT_S, trust_env=False
            ) as c:
                resp = await c.get(self.url)
                resp.raise_for_status()
                keys = jwt.PyJWKSet.from_dict(resp.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as e:
            log.warning("could not fetch the upstream's webhook keys from %s: %s", self.url, e)
            if self._keys is None:
                raise Unavailable("the upstream's webhook keys are unavailable") from None
            return  # keep the keys we had; try again after the cooldown
        self._keys = {k.key_id: k for k in keys if k.key_id}


class UpstreamJwt:
    """Per-request deliveries' JWTs as one API process checks them."""

    def __init__(
        self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.audience = audience_for(settings)
        self.jwks = JwksCache(jwks_url_for(settings), transport=transport)

    @property
    def configured(self) -> bool:
        return self.audience is not None

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of a per-request delivery's JWT; raises
        ``InvalidWebhook`` for a forged, expired, unknown-kid or
        wrong-audience token."""
        if self.audience is None:
            raise InvalidWebhook("per-request upstream webhooks are not configured")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):  # any header it holds
            raise InvalidWebhook("bad webhook token") from None
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str):
            raise InvalidWebhook("the webhook token must be RS256 with a kid")
        key = await self.jwks.key(kid)
        if key is None:
            raise InvalidWebhook("the webhook token's key is unknown")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "aud"]},
            )
        except jwt.PyJWTError as e:
            raise InvalidWebhook(f"bad webhook token: {e}") from None
        except (ValueError, TypeError, RecursionError):
            raise InvalidWebhook("bad webhook token") from None
        return claims
