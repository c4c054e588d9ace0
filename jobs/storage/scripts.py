"""The package's Lua scripts (``jobs/storage/lua/*.lua``), one purpose each, every key
they touch passed in ``KEYS`` (each file's header names its KEYS and ARGV).

  create_job           a new job: record, indexes, lane, Idempotency-Key
  start                a create answered: running, due for its first poll
  pause                requires_action: slot given back, event, due at the deadline
  resume               a follow-up create: running, submit step, out of the poll index
  finish               a job ends: indexes, counts, slot, event (outbox), expiry, batch_done
  set_flags            compare-and-set of fields without a change of status
  finish_batch         a batch ends: final fields and batch.completed (outbox)
  update_record        a plain write to a record that still exists
  dead_letter          an event's fields and its entry in the dead letters
  log_attempt          a delivery attempt appended to an event's log
  dispatch             a lane's head to arq's queue, within the budget granted
  tenant_tokens        a hop's usage into its tenant's day; the daily-tokens hold
  renew_lease          the dispatcher's lease
  claim_due            due entries of a due-time index, leased (engines, sweeper)
  reschedule_poll      a pending poll written back
  reschedule_delivery  a delivery attempt written back
  purge_job            a job and everything of its own deleted
  purge_batch          a batch's own keys deleted once its jobs are gone
  create_batch_jobs    a frame of a batch's new jobs: records, indexes, lane, job list
  renew_stage          a batch being written: its staging lease renewed
  commit_batch         a batch written: visible, its lane dispatchable, in one step
  abandon_batch        a batch that did not commit: marked so that no commit follows

Fields of a hash travel flat, ``field, value, ...``, after a script's
positional ARGV (``pairs``); ``create_job``'s whole new record travels as one
JSON object (one argument to encode per job, decoded by the script's ``cjson``).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def lua(name: str) -> str:
    """The text of one of the package's Lua scripts (``jobs/storage/lua/NAME.lua``)."""
    return resources.files("jobs.storage").joinpath("lua", f"{name}.lua").read_text()


def register(redis: Redis, *names: str) -> dict[str, AsyncScript]:
    return {name: redis.register_script(lua(name)) for name in names}


def pairs(fields: Mapping[str, Any]) -> list[Any]:
    """field, value, ... as HSET takes them."""
    out: list[Any] = []
    for k, v in fields.items():
        out += [k, v]
    return out
