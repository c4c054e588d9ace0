"""The API routes, one router per resource, each route answering for the
caller's tenant only (another tenant's object is a 404):

- ``jobs.py``: ``/v1/jobs``: create, list, get, cancel, continue, delete, a
  job's result and files;
- ``batches.py``: ``/v1/batches``: create (JSON or NDJSON), get, results,
  cancel, delete;
- ``webhooks.py``: delivery logs, dead letters and redelivery, the tenant's
  default endpoint and its secret rotation;
- ``upstream.py``: ``/v1/upstream/webhook``, the Gemini API's own webhooks
  (a JWT or a Standard Webhooks signature; no tenant key);
- ``rerun.py``: ``POST /v1/jobs/{id}/rerun`` and ``POST /v1/batches/{id}/rerun``;
- ``ops.py``: ``/healthz``, ``/readyz``, ``/metrics``, ``/v1/ops/summary``;
- ``events.py``: ``/v1/jobs/{id}/events`` and ``/v1/batches/{id}/events``
  (Server-Sent Events) and the ``?wait=`` of the two GETs.
"""
