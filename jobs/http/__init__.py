"""The HTTP side: the intake API that teams call.

- ``app.py``: ``create_app`` (services opened with the lifespan, middleware,
  error handlers, the routers); ``api.py`` at the top level is its entry.
- ``routes/``: the routes, one module per resource (jobs, batches, webhooks,
  ops).
- ``deps.py``: what a route depends on: the services, the caller's tenant
  (bearer auth, the per-tenant request limit), the tenant-scoped lookups.
- ``middleware.py``: the request body limit; ``errors.py``: every error
  answer as JSON (the ``ApiError`` tree of ``jobs/errors.py``, validation
  errors, Redis trouble as 503, anything else as a 500 without a traceback);
  ``views.py``: what the routes return, and each route's error answers for
  the OpenAPI schema.
- ``watch.py``: the one pub/sub subscription per process that wakes the
  watchers of a job or batch; ``sse.py``: what a watcher is sent (the event
  streams of ``routes/events.py``) and the snapshots they start from.

Routes hold no business rules: they check ownership, call the domain
(``jobs.domain``) or storage, and shape the answer. It may import anything
below it; nothing below imports it.
"""
