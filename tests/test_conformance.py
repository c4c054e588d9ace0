"""interq reads each field where the official google-genai SDK finds it.

Every response shape the simulator produces (test_simulator checks that each
parses with the SDK's ``Interaction``) is read twice, by the SDK and by
``jobs.interactions``, and the two must agree. The result interq stores (media
split out, ``uri`` in place of ``data``) must still parse with the SDK.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jobs.dev.simulator.app import OUTCOMES, OUTPUTS, SimConfig, create_app
from jobs.storage import media
from jobs.upstream import answers as interactions
from tests.test_simulator import FINAL, client_for, conform, create, poll

STOPPED = {"requires_action", "requires_continuation"} | set(FINAL.values())


def check_agreement(body: dict[str, Any]) -> None:
    sdk = conform(body)
    assert sdk.status == body["status"]
    assert interactions.output_text(body) == (sdk.output_text or None)
    sdk_calls = [s for s in sdk.steps or [] if s.type == "function_call"]
    answered = {s.call_id for s in sdk.steps or [] if s.type == "function_result"}
    assert [c["id"] for c in interactions.pending_calls(body)] == [
        c.id for c in sdk_calls if c.id not in answered
    ]
    counts = interactions.token_counts(body.get("usage"))
    if sdk.usage is not None:
        assert counts.get("input", 0) == (sdk.usage.total_input_tokens or 0)
        assert counts.get("output", 0) == (sdk.usage.total_output_tokens or 0)
    else:
        assert counts == {}
    err = interactions.errors(body)
    if sdk.errors:
        assert err is not None
        assert [e["message"] for e in err["upstream"]][: len(sdk.errors)] == [
            e.message for e in sdk.errors
        ]
    assert body.get("continuation_token") == sdk.continuation_token
    # the stored form stays SDK-parseable and loses no text
    stored, files = media.extract(body, lambda name: f"/v1/jobs/j/files/{name}")
    again = conform(stored)
    assert again.output_text == sdk.output_text
    if files:
        assert all("data" not in p for s in stored["steps"] for p in s.get("content") or [])


async def test_interq_reads_what_the_sdk_reads() -> None:
    async with client_for(create_app(SimConfig(duration_s=0.05))) as client:

        async def one(outcome: str, output: str) -> None:
            text = f"c {outcome}/{output} [sim duration=0.05 outcome={outcome} output={output}]"
            r = await create(client, text, tools=[{"type": "function", "name": "f"}])
            assert r.status_code == 200
            check_agreement(r.json())
            if outcome == "never":
                return
            body = await poll(client, r.json()["id"], STOPPED)
            check_agreement(body)

        await asyncio.gather(*(one(o, out) for o in OUTCOMES for out in OUTPUTS))


async def test_chained_shapes_agree() -> None:
    """Function results and continuation tokens, as interq sends them."""
    async with client_for(create_app(SimConfig(duration_s=0.05))) as client:
        r = await create(client, "x [sim outcome=requires_action]", tools=[{"type": "function"}])
        paused = await poll(client, r.json()["id"], {"requires_action"})
        check_agreement(paused)
        [call] = interactions.pending_calls(paused)
        answer = {
            "type": "function_result",
            "call_id": call["id"],
            "name": call["name"],
            "result": "ok",
        }
        r2 = await client.post(
            "/v1/interactions",
            json={
                "model": "m",
                "background": True,
                "previous_interaction_id": paused["id"],
                "input": [answer],
            },
        )
        check_agreement(await poll(client, r2.json()["id"], {"completed"}))

        r3 = await create(client, "y [sim outcome=requires_continuation]")
        cont = await poll(client, r3.json()["id"], {"requires_continuation"})
        check_agreement(cont)
        r4 = await client.post(
            "/v1/interactions",
            json={
                "model": "m",
                "background": True,
                "previous_interaction_id": cont["id"],
                "continuation_token": cont["continuation_token"],
            },
        )
        assert r4.status_code == 200, r4.text
        check_agreement(await poll(client, r4.json()["id"], {"completed"}))
