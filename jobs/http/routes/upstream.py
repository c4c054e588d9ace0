"""``POST /v1/upstream/webhook``: the Gemini API's own webhooks, a hint to poll
an interaction now. Called by the API, not by a tenant: no bearer key, its own
errors. Project-level deliveries are checked with the Standard Webhooks secret
(``INTERQ_UPSTREAM_WEBHOOK_SECRET``), per-request ones by their RS256 JWT
(``jobs/upstream/webhook_auth.py``); either way an accepted event only brings
that job's next poll forward, so a replayed one costs at most an early GET."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request, Response

from jobs.delivery import signing
from jobs.errors import InvalidWebhook, NotFound
from jobs.http.views import errors
from jobs.services import Services
from jobs.upstream.webhook_auth import UpstreamJwt, jwt_in

log = logging.getLogger("interq.webhooks")
router = APIRouter()


def _jwt_checker(request: Request, s: Services) -> UpstreamJwt:
    """One per app, so its key cache lives as long as the app."""
    checker: UpstreamJwt | None = getattr(request.app.state, "upstream_jwt", None)
    if checker is None:
        checker = request.app.state.upstream_jwt = UpstreamJwt(s.settings)
    return checker


async def authenticate(request: Request, s: Services, raw: bytes) -> str:
    """Which kind of delivery this is (``"jwt"`` or ``"hmac"``) once verified;
    NotFound when neither kind is configured, InvalidWebhook when it fails."""
    checker = _jwt_checker(request, s)
    secret = s.settings.upstream_webhook_secret
    if secret is None and not checker.configured:
        raise NotFound("upstream webhooks are not configured")
    headers = dict(request.headers)
    token = jwt_in(headers.get("webhook-signature", ""))
    if token is not None:
        await checker.claims(token)
        return "jwt"
    if secret is None:
        raise InvalidWebhook("project-level upstream webhooks are not configured")
    if not signing.verify(secret.get_secret_value(), headers, raw):
        raise InvalidWebhook("bad webhook signature")
    return "hmac"


def interaction_event(raw: bytes) -> tuple[str, str]:
    """The interaction an event names (``data.id``) and the event's type;
    InvalidWebhook for a body that is not JSON (or too deep to parse), not an
    object, or without a string id."""
    try:
        event = json.loads(raw)
        iid = event["data"]["id"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise InvalidWebhook("not an interaction event") from None
    if not isinstance(iid, str) or not iid:
        raise InvalidWebhook("not an interaction event")
    etype = event.get("type")
    return iid, etype[:100] if isinstance(etype, str) else "?"


@router.post(
    "/v1/upstream/webhook",
    status_code=204,
    response_class=Response,
    responses=errors(400, 404, 413, 503),
)
async def upstream_webhook(request: Request) -> Response:
    """The Gemini API's own webhook (a project-level one signed with the
    configured secret, or a per-request one carrying the API's JWT): poll that
    interaction now instead of at its next scheduled poll."""
    s: Services = request.app.state.svc
    raw = await request.body()
    kind = await authenticate(request, s, raw)
    iid, etype = interaction_event(raw)
    job_id = await s.store.job_for_interaction(iid)
    if job_id is not None and await s.store.poke(job_id):
        log.info(
            "upstream webhook %s (%s) for %s: polling job %s now",
            etype,
            kind,
            iid,
            job_id,
        )
    return Response(status_code=204)
