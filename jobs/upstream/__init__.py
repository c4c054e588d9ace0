"""The upstream: the Gemini Interactions API as interq talks to it.

- ``client``: create, get, cancel and continue an interaction; errors sorted
  into ``Retryable`` and ``Rejected``.
- ``backends``: the HTTP library under the client (aiohttp in production,
  httpx where a test hands in an ``httpx.MockTransport``).
- ``answers``: pure functions reading an Interaction's JSON (answer text,
  pending calls, usage), as the google-genai SDK reads them.

Upstream imports only ``jobs.settings`` and ``jobs.observe``.
"""
