"""The work: what a worker process runs.

- ``runner``: the worker process (arq settings, the loops it starts, drain).
- ``dispatch`` and ``budgets``: feeding queued jobs to arq fairly, within
  each model's rate, window and concurrency budget.
- ``steps``: the arq steps (``submit``); ``engine``: the due-time machinery
  shared by ``poller`` (the next GET of every running interaction) and the
  delivery engine; ``loops``: the one supervisor of every background loop;
  ``retention``: the sweeper.

Work may import every package below it (domain, storage, upstream,
delivery, observe, settings, services); nothing imports work but
``worker.py``, ``jobs.cli`` and ``jobs.delivery.engine`` (the shared engine).
"""
