"""The public ids interq mints, and the check that a caller's id has their form.

Jobs, batches and webhook events are named ``<prefix>_<32 lowercase hex>``
(``job_``, ``bat_``, ``evt_`` followed by a uuid4's hex, see
``jobs/domain/lifecycle.py`` and ``jobs/domain/batches.py``). An id from a URL
or a query is checked here before any Redis key is built from it, so a string
such as ``job_...:events`` or one with a ``}`` (a key of another type, a hash
tag of another record) never reaches Redis: the API answers it as an unknown
id (404). Each kind has its own check (``is_job_id``, ``is_batch_id``,
``is_event_id``); ``jobs/http/deps.py`` is where the routes' lookups use them.
"""

from __future__ import annotations

import os
import re
import uuid

JOB_PREFIX = "job_"
BATCH_PREFIX = "bat_"
EVENT_PREFIX = "evt_"

_HEX32 = "[0-9a-f]{32}"
_JOB = re.compile(rf"{JOB_PREFIX}{_HEX32}")
_BATCH = re.compile(rf"{BATCH_PREFIX}{_HEX32}")
_EVENT = re.compile(rf"{EVENT_PREFIX}{_HEX32}")


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB.fullmatch(value) is not None


def is_batch_id(value: object) -> bool:
    return isinstance(value, str) and _BATCH.fullmatch(value) is not None


def is_event_id(value: object) -> bool:
    return isinstance(value, str) and _EVENT.fullmatch(value) is not None


def new_job_ids(n: int) -> list[str]:
    """``n`` new job ids, as ``"job_" + uuid.uuid4().hex`` would make them,
    from one read of the system's randomness (``os.urandom`` lets go of the
    GIL: once per id, a batch's checking thread would wait for it again
    50,000 times while the event loop holds it)."""
    raw = os.urandom(16 * n)
    return [
        JOB_PREFIX + uuid.UUID(bytes=raw[i : i + 16], version=4).hex for i in range(0, 16 * n, 16)
    ]
