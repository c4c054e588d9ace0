"""The domain: what a job is and what may happen to it.

- ``statuses``: every job status and event type, in one place.
- ``records``: the typed ``Job``/``Event``/``Batch`` records at the store boundary.
- ``ids``: the form of the ids interq mints (``job_``, ``bat_``, ``evt_`` + hex),
  checked before a caller's id reaches a Redis key.
- ``requests``: the shapes callers send (``JobCreate``, ``BatchCreate``, ...)
  and their bounds (size, nesting depth).
- ``lifecycle``: applying an upstream answer to a job (end, pause, resume),
  its webhook events and stored result.
- ``batches``: accepting, counting, streaming and cancelling batches.
- ``cancel``: cancelling a job, one flow for the API, a batch and a delete.
- ``batch_pause``: a batch whose first jobs are all refused alike is held.
- ``usage``: a job's token usage summed over its interactions.

``statuses``, ``records``, ``ids`` and ``requests`` import nothing outside the domain; the
use cases (``lifecycle``, ``batches``, ``cancel``) also use storage, delivery (endpoints,
URL safety), upstream's pure answer readers and ``jobs.services``. Nothing
here imports ``jobs.http``, ``jobs.ui`` or ``jobs.cli``.
"""
