"""HTTP routes about webhooks: delivery logs, dead letters and redelivery, the
tenant's default endpoint and its secret rotation. The receiver for the Gemini
API's own webhooks is in ``jobs/http/routes/upstream.py``."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, field_validator

from jobs.delivery import endpoints, url_safety
from jobs.domain.records import Event, EventState, Fields
from jobs.domain.requests import WebhookSpec
from jobs.errors import Conflict, NotFound
from jobs.http.deps import Svc, Tenant, own_event, own_job
from jobs.http.views import errors

log = logging.getLogger("interq.webhooks")
router = APIRouter(responses=errors(401, 422, 429, 503))


def event_view(ev: Event, attempts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ev.id,
        "type": ev.type,
        "owner": ev.owner_ref,
        "state": ev.state.value,
        "attempts": ev.attempts,
        "created_at": ev.created_at,
        "last_attempt_at": ev.last_attempt_at,
        "last_error": ev.last_error or None,
    }
    if attempts is not None:
        out["attempt_log"] = attempts
    return out


@router.get("/v1/jobs/{job_id}/deliveries", responses=errors(404))
async def job_deliveries(job_id: str, s: Svc, t: Tenant) -> Any:
    """Every event of the job with each delivery attempt."""
    await own_job(s, t, job_id)
    out = []
    for eid in await s.store.job_event_ids(job_id):
        ev = await s.store.get_event(eid)
        if ev is not None:
            out.append(event_view(ev, await s.store.event_attempts(eid)))
    return {"data": out}


@router.get("/v1/webhooks/dead-letters")
async def dead_letters(s: Svc, t: Tenant, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    return {"data": [event_view(e) for e in await s.store.dead_letters(t, limit)]}


@router.post(
    "/v1/webhooks/events/{event_id}/redeliver", status_code=202, responses=errors(404, 409)
)
async def redeliver(event_id: str, s: Svc, t: Tenant) -> Any:
    """Send a dead-lettered (or already delivered) event again, same
    ``webhook-id``, with a fresh retry schedule."""
    ev = await own_event(s, t, event_id)
    if ev.state == EventState.pending:
        raise Conflict("the event is still being delivered")
    n = ev.redeliveries + 1
    await s.store.update_event(
        event_id, {"state": EventState.pending, "round_attempts": 0, "redeliveries": n}
    )
    await s.store.undead(t, event_id)
    await s.store.deliver_now(event_id)
    return event_view(replace(ev, state=EventState.pending))


class EndpointBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: AnyHttpUrl
    secret: str | None = None

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return WebhookSpec._check_secret(v)


def endpoint_view(ep: Fields) -> dict[str, Any]:
    until = float(ep.get("previous_until") or 0)
    return {
        "url": ep["url"],
        "updated_at": float(ep.get("updated_at") or 0),
        "rotating_until": until or None,
    }


@router.put("/v1/webhook-endpoint")
async def put_endpoint(body: EndpointBody, s: Svc, t: Tenant, response: Response) -> Any:
    """The tenant's default endpoint, for every job and batch without its own
    webhook. The secret is returned once, in ``X-Webhook-Secret``."""
    await url_safety.resolve(str(body.url), s.webhook_policy)  # 422 UnsafeURL
    secret = await endpoints.set_endpoint(s, t, str(body.url), body.secret)
    if body.secret is None:
        response.headers["X-Webhook-Secret"] = secret
    ep = await endpoints.get_endpoint(s, t)
    assert ep is not None
    return endpoint_view(ep)


@router.get("/v1/webhook-endpoint", responses=errors(404))
async def get_endpoint(s: Svc, t: Tenant) -> Any:
    ep = await endpoints.get_endpoint(s, t)
    if ep is None:
        raise NotFound("no default webhook endpoint")
    return endpoint_view(ep)


@router.post("/v1/webhook-endpoint/rotate", responses=errors(404))
async def rotate_secret(s: Svc, t: Tenant, response: Response) -> Any:
    """A new signing secret (in ``X-Webhook-Secret``); deliveries carry both
    signatures until ``rotating_until``."""
    rotated = await endpoints.rotate(s, t)
    if rotated is None:
        raise NotFound("no default webhook endpoint")
    response.headers["X-Webhook-Secret"] = rotated[0]
    ep = await endpoints.get_endpoint(s, t)
    assert ep is not None
    return endpoint_view(ep)


@router.delete("/v1/webhook-endpoint", status_code=204, response_class=Response)
async def delete_endpoint(s: Svc, t: Tenant) -> Response:
    await s.redis.delete(endpoints.endpoint_key(s, t))
    s.cache.pop("endpoints", None)
    return Response(status_code=204)
