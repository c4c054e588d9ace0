"""The API's own outgoing webhooks (reference section 9): an end-of-run timer
per background interaction whose final status has an event, one
``interaction.<status>`` event per interaction and type, delivered to every
URI with retries, each attempt recorded in ``webhook_log``. Faults never apply
here. A per-request delivery (to the create body's ``webhook_config.uris``)
carries an RS256 JWT in ``webhook-signature``, signed with the simulator's own
key (:class:`SigningKey`, served at ``/.well-known/jwks.json``); a project-level
one is signed in the Standard Webhooks format (or sent unsigned)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from jobs.delivery.signing import headers_for
from jobs.dev.simulator.config import SimConfig
from jobs.dev.simulator.scenarios import phase, timeline
from jobs.dev.simulator.wire import JSON, iso

# Final status -> webhook event type (reference section 9).
WEBHOOK_EVENTS = {
    "completed": "interaction.completed",
    "failed": "interaction.failed",
    "cancelled": "interaction.cancelled",
    "requires_action": "interaction.requires_action",
}
WEBHOOK_TIMEOUT_S = 5.0  # per attempt; the API expects receivers to answer in a few seconds
_log = logging.getLogger(__name__)


def envelope_for(rec: JSON, etype: str) -> JSON:
    """The event body for an interaction record."""
    _, changed, _ = phase(rec, time.monotonic())
    data: JSON = {"id": rec["id"]}
    if etype == "interaction.failed":
        # Documented fields; their value types are not. 13 = google.rpc INTERNAL,
        # as in the failed interaction's model_output.error.
        data |= {"error_code": 13, "error_message": "Simulated failure"}
    envelope: JSON = {"type": etype, "version": "v1"}
    envelope |= {"timestamp": iso(rec["wall"] + changed), "data": data}
    wc = rec["echo"].get("webhook_config") or {}
    if "user_metadata" in wc:
        # Where the real API puts user_metadata is UNCONFIRMED (reference section 9,
        # "inside or next to data"); the simulator puts it next to data so that
        # data keeps exactly the documented fields.
        envelope["user_metadata"] = wc["user_metadata"]
    return envelope


@dataclass(frozen=True)
class Sent:
    """One event to one URI (all its attempts)."""

    uri: str
    event_id: str
    etype: str
    iid: str
    body: bytes
    per_request: bool  # to the create body's webhook_config.uris: JWT-signed


class SigningKey:
    """The simulator's RSA key for per-request deliveries, made on first use
    (a fresh one per simulator), with a random ``kid``."""

    def __init__(self) -> None:
        self.kid = "sim-" + secrets.token_hex(8)
        self._private: rsa.RSAPrivateKey | None = None

    @property
    def private(self) -> rsa.RSAPrivateKey:
        if self._private is None:
            self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._private

    def jwks(self) -> JSON:
        """The public key as a JWK Set (``GET /.well-known/jwks.json``)."""
        jwk: JSON = dict(RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True))
        return {"keys": [jwk | {"kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, aud: str, sub: str, event_id: str, ttl_s: float) -> str:
        """A delivery's JWT: ``aud``, ``sub`` (the interaction id), ``jti``
        (the event id), ``iat`` and ``exp``."""
        now = int(time.time())
        claims: JSON = {"aud": aud, "sub": sub, "jti": event_id}
        claims |= {"iat": now, "exp": now + int(ttl_s)}
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


class Webhooks:
    """Timers, deliveries in flight and the delivery log of one simulator;
    ``interactions`` is the simulator's own dict (looked up when a timer fires)."""

    def __init__(self, config: SimConfig, interactions: dict[str, JSON]) -> None:
        self.config = config
        self.interactions = interactions
        # One entry per delivery attempt: t, event_id, type, interaction_id, uri,
        # attempt (1-based), status (HTTP status or None) and error (str or None).
        self.log: list[JSON] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}  # interaction id -> end-of-run timer
        self._tasks: set[asyncio.Task[None]] = set()  # deliveries in flight
        self._client: httpx.AsyncClient | None = None
        self.key = SigningKey()

    def arm_end_timer(self, rec: JSON) -> None:
        """Arm a timer for the end of the timeline when its final status has an
        event. Created lazily on the running loop, so it works whether or not
        the app's lifespan ran; without a running loop no event is sent."""
        tl = timeline(rec["outcome"], rec["duration"])
        if len(tl) < 2 or tl[-1][1] not in WEBHOOK_EVENTS:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._arm(loop, rec["id"], rec["start"] + tl[-1][0], WEBHOOK_EVENTS[tl[-1][1]])

    def _arm(self, loop: asyncio.AbstractEventLoop, iid: str, due: float, etype: str) -> None:
        delay = max(0.0, due - time.monotonic())  # loop.time() is time.monotonic()
        self._timers[iid] = loop.call_later(delay, self._on_timer, loop, iid, due, etype)

    def _on_timer(self, loop: asyncio.AbstractEventLoop, iid: str, due: float, etype: str) -> None:
        self._timers.pop(iid, None)
        rec = self.interactions.get(iid)
        if rec is None or rec["cancelled_at"] is not None:
            return
        if time.monotonic() < due:  # fired a hair early: a GET would not see the status yet
            self._arm(loop, iid, due, etype)
            return
        self.emit(rec, etype)

    def disarm(self, iid: str) -> None:
        handle = self._timers.pop(iid, None)
        if handle is not None:
            handle.cancel()

    def emit(self, rec: JSON, etype: str) -> None:
        """Start one delivery task per URI for this event (at most once per
        interaction and event type)."""
        if etype in rec["events"]:
            return
        rec["events"].add(etype)
        wc = rec["echo"].get("webhook_config") or {}
        per_request = bool(wc.get("uris"))
        uris = list(dict.fromkeys(wc.get("uris") or self.config.webhook_urls))
        if not uris:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        body = json.dumps(envelope_for(rec, etype), separators=(",", ":")).encode()
        event_id = "evt_" + secrets.token_urlsafe(16)
        for uri in uris:
            sent = Sent(uri, event_id, etype, rec["id"], body, per_request)
            task = loop.create_task(self._deliver(sent))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sent: Sent) -> None:
        delays = list(self.config.webhook_retry_s)
        error: str | None = None
        for attempt in range(1, len(delays) + 2):
            if attempt > 1:
                await asyncio.sleep(delays[attempt - 2])
            status, error = await self._attempt(sent)
            self.log.append(
                {"t": time.time(), "event_id": sent.event_id, "type": sent.etype}
                | {"interaction_id": sent.iid, "uri": sent.uri, "attempt": attempt}
                | {"status": status, "error": error}
            )
            if error is None:
                return
        _log.warning(
            "giving up on webhook %s (%s) to %s: %s", sent.event_id, sent.etype, sent.uri, error
        )

    async def _attempt(self, sent: Sent) -> tuple[int | None, str | None]:
        """One POST: (HTTP status or None, error or None)."""
        if self._client is None:  # one client, made on the loop that delivers
            self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, trust_env=False)
        try:
            headers = self._headers(sent)
            resp = await self._client.post(sent.uri, content=sent.body, headers=headers)
        except Exception as exc:  # connection errors, bad URLs, a bad secret
            return None, f"{type(exc).__name__}: {exc}"
        status = resp.status_code
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    def _headers(self, sent: Sent) -> dict[str, str]:
        """Fresh per attempt (timestamp, token); the same ``webhook-id``."""
        secret = self.config.webhook_secret
        if sent.per_request or secret is None:
            headers = {"webhook-id": sent.event_id, "webhook-timestamp": str(int(time.time()))}
            headers["content-type"] = "application/json"
        else:
            headers = headers_for(secret, sent.event_id, sent.body)
        if sent.per_request:
            aud = self.config.webhook_audience or sent.uri
            ttl = self.config.webhook_token_ttl_s
            headers["webhook-signature"] = self.key.token(aud, sent.iid, sent.event_id, ttl)
        headers["user-agent"] = "interq-simulator"
        return headers

    def pending(self) -> int:
        """Armed timers plus deliveries in flight."""
        return len(self._timers) + len(self._tasks)

    def cancel_pending(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            try:
                task.cancel()
            except RuntimeError:  # its loop is closed already
                self._tasks.discard(task)

    async def aclose(self) -> None:
        """Cancel armed timers and deliveries in flight and wait for the latter."""
        tasks = list(self._tasks)
        self.cancel_pending()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
