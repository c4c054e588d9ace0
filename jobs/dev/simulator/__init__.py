"""The in-memory Gemini Interactions API simulator (see ``app`` for what it
speaks, the ``[sim ...]`` directive, the faults and the webhooks).

Modules:

* ``app``: the Starlette app (``create_app``), its routes and ``serve``; it
  also re-exports the public names below, which is where importers take them
  from (``from jobs.dev.simulator.app import SimConfig, create_app``).
* ``lifecycle``: :class:`Simulator`, the interaction state machine
  (create, continue, get, cancel, delete) and the admin operations.
* ``scenarios``: the directive, the timelines and the answers an interaction
  is given at create time.
* ``faults``: seeded fault draws, the quota window and the fault responses.
* ``webhooks``: end-of-run timers and signed, retried event deliveries.
* ``config``: ``SimConfig``, ``config_from_env`` and config/webhook checks.
* ``wire``: shared constants, google.rpc-style error bodies, ids, timestamps.

Development-only: nothing in the service's production path imports it.
"""

from jobs.dev.simulator.app import SimConfig, Simulator, config_from_env, create_app, serve

__all__ = ["SimConfig", "Simulator", "config_from_env", "create_app", "serve"]
