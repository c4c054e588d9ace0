"""The ops page at ``/ui`` and the numbers it polls.

- ``page.py``: the routes (``GET /ui``, ``GET /v1/ops/summary``) and the page
  assembled once from ``assets/`` (``ops.html``, ``ops.css``, ``ops.js``) with a
  Content-Security-Policy pinning the hashes of its own script and style.
"""
