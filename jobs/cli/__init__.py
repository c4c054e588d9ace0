"""The ``interq`` command line (typer).

- ``main.py``: the app and the batch commands (submit, results, status, cancel)
- ``up.py``: ``interq up``, what to start (from the environment and ``.env``) and
  the harness (``jobs/dev/harness.py``) that supervises it
- ``serve.py``: one part each: api, worker, simulator, receiver, hash-key
- ``batchfile.py``: a batch file with ``--webhook-url`` on every job line
- ``output.py``: what the batch commands print
"""
