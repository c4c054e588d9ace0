"""Chaos run: the whole service as real processes under SIGKILLs, a Redis restart,
upstream faults and a webhook receiver outage. ``python -m chaos.run``."""
