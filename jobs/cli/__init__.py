"""The ``interq`` command line (console script ``interq = jobs.cli.main:main``,
also ``python -m jobs.cli``).

- ``main``: the typer app; wires the commands below and holds the ``--help`` text.
- ``up``: ``interq up``, Redis + simulator (when no GEMINI_API_KEY, in the
  environment or ``.env``) + API + workers under the ``jobs.dev.harness``
  supervisor; ``plan_up`` is its decision, testable on its own.
- ``serve``: one part each in the foreground: ``api``, ``worker``,
  ``simulator``, ``receiver`` (``jobs.dev.receiver``), ``hash-key``.
- ``batches``: ``submit`` / ``results`` / ``status`` / ``cancel`` against a
  running API through ``jobs.client``.
- ``quota``: ``interq quota status`` / ``interq quota resume MODEL``, the
  per-day quota holds and the upstream key's health, read from Redis.
- ``output``: how those print (one-line errors with exit code 1, counts, jobs).
"""
