"""The HTTP intake: ``uvicorn api:app`` (or ``interq api``). OpenAPI at /docs.

The app is built in ``jobs/http/app.py``; its routes are in
``jobs/http/routes/``."""

from __future__ import annotations

from jobs.http.app import create_app

__all__ = ["app", "create_app"]

app = create_app()
