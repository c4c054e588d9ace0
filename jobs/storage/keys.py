"""Every Redis key name interq uses, built in one place: ``Keys(prefix)``.

``p`` is ``INTERQ_KEY_PREFIX`` (``interq`` by default). A part in braces is a
Redis Cluster hash tag: the keys of one job share the tag ``{<job id>}``, the
keys of one batch ``{<batch id>}``, the keys of one event ``{<event id>}``.

  key                               type  what
  {p}:job:{<job>}                   hash  the job record (``records.Job``)
  {p}:job:{<job>}:events            list  its event ids, oldest first
  {p}:batch:{<batch>}               hash  the batch record: total, done, usage, status
  {p}:batch:{<batch>}:counts        hash  status -> number of the batch's jobs
  {p}:batch:{<batch>}:jobs          list  the batch's job ids, in input order
  {p}:batch:{<batch>}:events        list  its event ids (``batch.completed``)
  {p}:job:{<job>}:changes           strm  its status changes, for watchers (capped ~200)
  {p}:batch:{<batch>}:changes       strm  the batch's status changes, for watchers
  {p}:changes                       chan  pub/sub: "job:<id>" / "batch:<id>" on every change
  {p}:event:{<event>}               hash  a webhook event (the outbox, ``records.Event``)
  {p}:event:{<event>}:attempts      list  its last 100 delivery attempts, JSON
  {p}:seq                           str   counter giving each job a unique, ordered ``seq``
  {p}:counts                        hash  status -> number of jobs (all tenants), for gauges
  {p}:t:<tenant>:jobs               zset  seq -> job id (listing with a cursor)
  {p}:t:<tenant>:s:<status>         zset  seq -> job id, one per status
  {p}:t:<tenant>:deadletter         zset  time -> dead-lettered event id
  {p}:idem:<tenant>:<key digest>    str   "job_id|body digest" for Idempotency-Key
  {p}:iid:<interaction id>          str   job id (for the upstream's own webhooks)
  {p}:endpoint:<tenant>             hash  the tenant's default webhook endpoint
  {p}:t:<tenant>:day:<YYYY-MM-DD>   hash  the tenant's Pacific day: tokens, cost_nano_usd
  {p}:t:<tenant>:tokens_hold        str   the day's end while over tokens_per_day
                                          ("lifted" once an operator lifted it)
  {p}:t:<tenant>:dispatched         zset  job id -> dispatch ms, sent to arq, not started
  {p}:tenant_holds                  set   tenants that have a tokens_hold (no SCAN)
  {p}:polls                         zset  job id -> due ms: the poll engine's index
  {p}:deliveries                    zset  event id -> due ms: the delivery engine's index
  {p}:ready:<tenant>|<batch or ->   list  job ids waiting for dispatch (a lane)
  {p}:lanes                         set   lanes that are not empty
  {p}:inflight:<model>              zset  job id -> dispatch ms (budgets, gauges)
  {p}:models                        set   models with a non-empty inflight zset (no SCAN)
  {p}:outstanding:<model>           zset  job id -> dispatch ms, its window token not taken yet
  {p}:adapt:<model>                 hash  the rate share after a 429 (factor, at)
  {p}:rate...                       -     the ``limits`` library's moving windows
  {p}:dispatcher                    str   the dispatcher's lease (holder id)
  {p}:expiring:jobs                 zset  job id -> ms when it is purged (jobs without a batch)
  {p}:expiring:batches              zset  batch id -> ms when it is purged
  {p}:readyz                        str   /readyz's write probe (10 s)
  <queue>                           zset  arq's queue (``INTERQ_QUEUE_NAME``, ``interq:queue``)
  arq:job:<step id>, arq:retry:...  str   arq's own keys for a queued step (arq's names)

An event's keys carry the event's own tag, not its owner's: the event id is
random (``evt_<hex>``), it is the public ``webhook-id``, and the delivery index,
the dead letters and ``POST /v1/webhooks/events/{id}/redeliver`` know only that
id, so the owner's tag cannot be derived from it without changing its format.

A job record keeps ``idem_key``, the name of its Idempotency-Key, so that
``jobs/purge.py`` can delete it with the job.

Redis Cluster: not ready, and the tags alone do not make it so. They put a
job's record and its events list in one slot, an event's record and its
attempt log in another, a batch's record, counts, job list and events list in
a third. Everything else lives in slots of its own: the global indexes
(``polls``, ``deliveries``, ``counts``, ``seq``, the tenant and status zsets,
the lanes, ``inflight``, ``models``, ``expiring``), the Idempotency-Keys and
``iid`` mappings, and arq's queue and keys (names arq fixes). These scripts
touch keys of several slots in one call: ``create_job``, ``start``,
``pause``, ``resume``, ``finish``, ``finish_batch``, ``dispatch``,
``purge_job``, ``purge_batch``, ``reschedule_poll``, ``reschedule_delivery``
and ``dead_letter``; only ``set_flags``, ``update_record``, ``log_attempt``,
``claim_due`` and ``renew_lease`` stay in one slot. Every script names its
keys in ``KEYS``, so the list above is checkable, and ``docs/design.md`` says
what a move to Cluster would take.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import job_key_prefix, retry_key_prefix

DEFAULT_PREFIX = "interq"
DEFAULT_QUEUE = "interq:queue"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (and arq's queue name)."""

    prefix: str = DEFAULT_PREFIX
    queue: str = DEFAULT_QUEUE

    # -- one job, one batch, one event ------------------------------------------
    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}:events"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{{{batch_id}}}"

    def batch_counts(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{{{batch_id}}}:counts"

    def batch_jobs(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{{{batch_id}}}:jobs"

    def batch_events(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{{{batch_id}}}:events"

    def event(self, event_id: str) -> str:
        return f"{self.prefix}:event:{{{event_id}}}"

    def event_attempts(self, event_id: str) -> str:
        return f"{self.prefix}:event:{{{event_id}}}:attempts"

    def owner(self, ref: str) -> str:
        """The record an event belongs to, from its ``owner`` ("job:<id>" or
        "batch:<id>")."""
        kind, _, owner_id = ref.partition(":")
        if kind == "batch":
            return self.batch(owner_id)
        if kind == "job":
            return self.job(owner_id)
        raise ValueError(f"not an event owner: {ref!r}")

    def owner_events(self, ref: str) -> str:
        """The events list of an event's owner ("job:<id>" or "batch:<id>")."""
        return self.owner(ref) + ":events"

    # -- per tenant -------------------------------------------------------------
    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:jobs"

    def tenant_status(self, tenant: str, status: str) -> str:
        return f"{self.prefix}:t:{tenant}:s:{status}"

    def deadletter(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:deadletter"

    def idem(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{key}"

    def endpoint(self, tenant: str) -> str:
        return f"{self.prefix}:endpoint:{tenant}"

    def tenant_day(self, tenant: str, day: str) -> str:
        """The tenant's tokens and cost of one Pacific day (``YYYY-MM-DD``)."""
        return f"{self.prefix}:t:{tenant}:day:{day}"

    def tenant_hold(self, tenant: str) -> str:
        """Set until the day's turn while the tenant is over its tokens_per_day."""
        return f"{self.prefix}:t:{tenant}:tokens_hold"

    @property
    def tenant_holds(self) -> str:
        return f"{self.prefix}:tenant_holds"

    def tenant_dispatched(self, tenant: str) -> str:
        """The tenant's jobs moved to arq and still queued (its in-flight cap)."""
        return f"{self.prefix}:t:{tenant}:dispatched"

    def iid(self, interaction_id: str) -> str:
        return f"{self.prefix}:iid:{interaction_id}"

    # -- dispatch and budgets ---------------------------------------------------
    def ready(self, lane: str) -> str:
        return f"{self.prefix}:ready:{lane}"

    @property
    def lanes(self) -> str:
        return f"{self.prefix}:lanes"

    def inflight(self, model: str) -> str:
        return f"{self.prefix}:inflight:{model}"

    @property
    def models(self) -> str:
        return f"{self.prefix}:models"

    def outstanding(self, model: str) -> str:
        return f"{self.prefix}:outstanding:{model}"

    def adapt(self, model: str) -> str:
        return f"{self.prefix}:adapt:{model}"

    @property
    def rate_prefix(self) -> str:
        """The ``limits`` library's key prefix (it names the keys under it)."""
        return f"{self.prefix}:rate"

    @property
    def dispatcher(self) -> str:
        return f"{self.prefix}:dispatcher"

    # -- global indexes and counters --------------------------------------------
    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def counts(self) -> str:
        return f"{self.prefix}:counts"

    @property
    def polls(self) -> str:
        return f"{self.prefix}:polls"

    @property
    def deliveries(self) -> str:
        return f"{self.prefix}:deliveries"

    @property
    def expiring_jobs(self) -> str:
        return f"{self.prefix}:expiring:jobs"

    @property
    def expiring_batches(self) -> str:
        return f"{self.prefix}:expiring:batches"

    @property
    def readyz(self) -> str:
        return f"{self.prefix}:readyz"

    # -- pauses (jobs/work/budgets.py sets them; the dispatcher, the submit
    # step, /readyz and the gauges read them) ------------------------------------
    def quota_hold(self, model: str) -> str:
        """Set (until the daily reset) while a per-day quota holds ``model``."""
        return f"{self.prefix}:hold:{model}"

    @property
    def quota_holds(self) -> str:
        return f"{self.prefix}:holds"

    @property
    def key_refused(self) -> str:
        """Set (for a minute, renewed) while the upstream answers 401/403."""
        return f"{self.prefix}:upstream_key:refused"

    @property
    def key_ok(self) -> str:
        return f"{self.prefix}:upstream_key:ok"

    # -- watching (jobs/http/watch.py): change streams, one pub/sub channel -------
    def job_changes(self, job_id: str) -> str:
        """A job's status changes (a stream; entry ids are the SSE event ids)."""
        return f"{self.prefix}:job:{{{job_id}}}:changes"

    def batch_changes(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{{{batch_id}}}:changes"

    @property
    def changes_channel(self) -> str:
        """The one pub/sub channel: each change publishes "job:<id>" or "batch:<id>"."""
        return f"{self.prefix}:changes"

    # -- arq's own names --------------------------------------------------------
    @staticmethod
    def arq_job(step_id: str) -> str:
        return job_key_prefix + step_id

    @staticmethod
    def arq_retry(step_id: str) -> str:
        return retry_key_prefix + step_id


def lane_of(tenant: str, batch_id: str | None) -> str:
    """The dispatch lane of a job: one FIFO per tenant and batch."""
    return f"{tenant}|{batch_id or '-'}"
