"""Estimated cost, from the price table (``INTERQ_PRICES``: USD per million
input, output and thought tokens, per model or agent, ``*`` for any other).

A cost is kept as an integer of nano-USD (1e-9 USD), so that sums (a batch,
a tenant's day) are exact and do not depend on the order jobs end in; views
show it as ``estimated_cost_usd``, a float in USD.

- a job: the cost of its ``usage`` (every hop summed), written with the usage
  by the transition that records it (``cost_nano_usd`` on the record): the
  prices of the time the tokens were used;
- a batch: the running total of its ended jobs (``cost_nano_usd`` on the
  batch, added after each job ends, so it can trail by the jobs ending at
  that moment), and once the batch has ended the exact sum over its jobs,
  computed once and kept (``cost_final_nano_usd``);
- a tenant: per Pacific day, beside its tokens (``jobs/domain/tenants.py``).

A model without a price (and no ``*`` entry) costs ``None`` (unknown) for a
job, and nothing in the sums. Cached and tool-use tokens are not priced
separately: ``total_input_tokens`` already holds the cached ones.
"""

from __future__ import annotations

from typing import Any

from jobs.domain.records import Batch, JobUpdate
from jobs.services import Services
from jobs.settings import Settings
from jobs.storage.scripts import register
from jobs.upstream import answers as interactions

NANO_PER_USD = 1_000_000_000
CHUNK = 500


def cost_nano(settings: Settings, model: str, usage: Any) -> int | None:
    """The cost of ``usage`` under the model's price, in nano-USD; None
    without a price or usage."""
    price = settings.price_for(model)
    if price is None or not isinstance(usage, dict):
        return None
    counts = interactions.token_counts(usage)
    thought = price.output if price.thought is None else price.thought
    # USD per million tokens = nano-USD per token * 1000
    nano = (
        counts.get("input", 0) * price.input
        + counts.get("output", 0) * price.output
        + counts.get("thought", 0) * thought
    ) * 1000
    return round(nano)


def usd(nano: int | None) -> float | None:
    return None if nano is None else round(nano / NANO_PER_USD, 9)


def stamp(settings: Settings, model: str, fields: JobUpdate, extra: dict[str, Any]) -> None:
    """Put the cost of the usage a transition writes beside it (``fields``),
    and into the event's data (``extra``)."""
    if fields.get("usage") is None:
        return
    nano = cost_nano(settings, model, fields.get("usage"))
    fields["cost_nano_usd"] = nano
    if nano is not None:
        extra["estimated_cost_usd"] = usd(nano)


async def batch_cost(svc: Services, batch: Batch) -> float | None:
    """A batch's estimated cost: the running total while it runs, the exact
    sum over its jobs once it ended (computed once, then kept on the batch).
    None when no price is configured."""
    if not svc.settings.prices:
        return None
    if batch.finished_at is None:
        return usd(batch.cost_nano_usd)
    if batch.cost_final_nano_usd is not None:
        return usd(batch.cost_final_nano_usd)
    total = await exact_batch_cost(svc, batch.id)
    lua = svc.cache.get("costs_lua")
    if lua is None:
        lua = svc.cache["costs_lua"] = register(svc.redis, "update_record")
    assert isinstance(lua, dict)
    # only onto a batch that still exists (a purge may have run meanwhile)
    await lua["update_record"](
        keys=[svc.store.keys.batch(batch.id)], args=[0, "cost_final_nano_usd", str(total)]
    )
    return usd(total)


async def exact_batch_cost(svc: Services, batch_id: str) -> int:
    """The sum of the costs recorded on the batch's jobs, their earlier
    attempts' included (nano-USD)."""
    keys = svc.store.keys
    total = 0
    start = 0
    while True:
        raw = await svc.redis.lrange(keys.batch_jobs(batch_id), start, start + CHUNK - 1)  # type: ignore[misc]
        if not raw:
            return total
        async with svc.redis.pipeline(transaction=False) as pipe:
            for jid in raw:
                job_key = keys.job(jid.decode() if isinstance(jid, bytes) else str(jid))
                pipe.hmget(job_key, ["cost_nano_usd", "earlier_cost_nano_usd"])
            for pair in await pipe.execute():
                total += sum(int(v) for v in pair if v)
        start += len(raw)
