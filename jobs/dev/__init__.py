"""Development tools that ship with interq but are not part of the service.

``jobs.dev.simulator`` is an in-memory fake of the Gemini Interactions API,
used by the tests, the benches, the chaos run, ``interq simulator`` and
``make run``/``interq up`` when no ``GEMINI_API_KEY`` is set.

Nothing on the service's production path (``api``, ``worker`` and the
``jobs`` modules they load) imports ``jobs.dev``; only the CLI's
``simulator`` command does, inside the function that runs it.
"""
