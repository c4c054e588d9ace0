"""The ops page: ``GET /ui``, one self-contained HTML page (its body, CSS and
vanilla JS are the package files ``jobs/ui/assets/ops.html``, ``ops.css`` and
``ops.js``, inlined at start so that the CSP can pin their hashes; nothing is
fetched from elsewhere, no build step). The queue-level numbers it polls,
``GET /v1/ops/summary``, are an API route (``jobs/http/routes/ops.py``).

The page reads everything else through the ordinary tenant API with the key
the user typed (kept in ``localStorage``): ``GET /v1/batches/{id}/events``
(each shown batch that has not ended is followed live, over ``fetch`` so that
the stream carries the key), ``GET /v1/jobs``,
``GET /v1/webhooks/dead-letters``, ``POST /v1/webhooks/events/{id}/redeliver``
and ``GET /v1/jobs/{id}/deliveries``. Strings that callers control (custom ids,
metadata, errors, model names) only ever reach the page through
``textContent``; a Content-Security-Policy that admits just this page's own
script and style backs that up.
"""

from __future__ import annotations

import base64
import hashlib
import html
from importlib import resources

from fastapi import APIRouter, Response

from jobs.domain.statuses import JobStatus

__all__ = ["router"]

router = APIRouter()


def _asset(name: str) -> str:
    """One of the page's files (``jobs/ui/assets/``): its HTML body, CSS and JS."""
    return resources.files("jobs.ui").joinpath("assets", name).read_text(encoding="utf-8")


_STYLE = _asset("ops.css")

_SCRIPT = _asset("ops.js")

_BODY = _asset("ops.html")


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _page() -> tuple[str, str]:
    options = "".join(
        f'\n        <option value="{html.escape(st.value)}">{html.escape(st.value)}</option>'
        for st in JobStatus
    )
    body = _BODY.replace("__STATUS_OPTIONS__", options)
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n<title>interq ops</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>{body}<script>{_SCRIPT}</script>\n"
        "</body>\n</html>\n"
    )
    csp = (
        "default-src 'none'; "
        f"script-src 'sha256-{_sha256(_SCRIPT)}'; "
        f"style-src 'sha256-{_sha256(_STYLE)}'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, csp


PAGE, CSP = _page()


@router.get("/ui", include_in_schema=False)
async def ui() -> Response:
    """The ops page. It holds no data: everything is fetched with the key the
    user enters, so serving it needs no auth."""
    return Response(
        PAGE,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )
