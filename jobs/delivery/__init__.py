"""Delivery: the webhooks interq sends.

- ``endpoints``: where an event goes (the job's own webhook or the tenant's
  endpoint) and with which secrets.
- ``signing``: the Standard Webhooks headers and signatures, the retry schedule.
- ``url_safety``: only public addresses, checked at intake and again at send.
- ``sender``: one attempt; ``engine``: the delivery loop, its concurrency and
  per-destination bound.

Delivery imports storage, the domain's records, observe, ``jobs.services``
and the due-time engine of ``jobs.work.engine``.
"""
