"""Observability: ``metrics`` (every Prometheus metric, in one place, with
the scrape-time queue gauges) and ``logs`` (one JSON object per line, with
the ids of whatever wrote it).

Imported by everything; it imports only the domain's statuses and
``jobs.storage.keys`` (for the scrape-time gauges).
"""
