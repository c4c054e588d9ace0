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
import random
import secrets
import time

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


MAX_TIMESTAMP_DIGITS = 12  # unix seconds until the year 33658


def parse_timestamp(value: str) -> int | None:
    """A ``webhook-timestamp`` as unix seconds, or None if it is not one: ASCII
    digits only, at most ``MAX_TIMESTAMP_DIGITS`` of them (a 400-digit number is
    a valid int but no float, and no time)."""
    value = value.strip()
    if not value or len(value) > MAX_TIMESTAMP_DIGITS or not value.isascii():
        return None
    return int(value) if value.isdigit() else None


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """Check a Standard Webhooks delivery: any ``v1,`` signature matches and
    the timestamp is within ``tolerance_s`` of now. Any header the sender
    chose (missing, malformed, not ASCII, absurdly long) is a failed check,
    never an exception."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and sigs):
        return False
    stamp = parse_timestamp(ts)
    if stamp is None or abs(time.time() - stamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, stamp, body).encode()
    return any(
        hmac.compare_digest(expected, s.encode("utf-8", "replace"))
        for s in sigs.split()
        if s.startswith("v1,")
    )


def next_delay(schedule: list[float], attempt: int, jitter: float) -> float | None:
    """Delay before attempt number ``attempt + 1`` (attempt counts from 1), or
    None when the schedule is exhausted."""
    if attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    return base * (1 + random.uniform(-jitter, jitter))
