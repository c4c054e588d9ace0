"""Storage: everything interq keeps, and how.

- ``keys``: every Redis key name; ``lua/`` + ``scripts``: one Lua script per
  purpose, every key in ``KEYS``.
- ``store``: typed reads and plain writes of records; ``transitions``: the
  atomic job transitions (one script each); ``purge``: deleting a job or batch;
  ``changes``: reading the change streams the transitions write (watchers).
- ``results`` and ``media``: results and inline media in object storage
  (obstore: local folder, S3, GCS, Azure).

Storage imports the domain's records and statuses and ``jobs.services``
(``purge``); never ``jobs.http`` or ``jobs.work``.
"""
