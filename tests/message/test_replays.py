"""An Idempotency-Key replays the first answer, whichever version of the gate stored it."""

from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem
from tests.factories import PN
from tests.upstream import WA, Gated, Meta, meta_error, open_window, text_message


async def stored(engine: AsyncEngine, message_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        response = (
            await conn.execute(text("SELECT response FROM messages WHERE id = :id"), {"id": message_id})
        ).scalar_one()
    assert isinstance(response, dict)
    return response


async def store(engine: AsyncEngine, message_id: str, response: dict[str, Any]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE messages SET response = CAST(:response AS jsonb) WHERE id = :id"),
            {"id": message_id, "response": orjson.dumps(response).decode()},
        )


async def test_an_answer_is_stored_with_its_version(gate: Gated) -> None:
    client, engine = gate
    await open_window(client)
    sent = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "k"})
    assert sent.status_code == 201, sent.text
    answer = await stored(engine, sent.json()["id"])
    assert answer["version"] == 2 and answer["out"] == sent.json()
    assert answer["meta"]["messages"][0]["id"] == sent.json()["graph_message_id"]


async def test_a_send_stored_before_versions_replays_as_first_answered(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await open_window(client)
    first = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "old"})
    assert first.status_code == 201, first.text
    meta_answer = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "+55 11 98765-4321", "wa_id": WA}],
        "messages": [{"id": first.json()["graph_message_id"], "message_status": "accepted"}],
    }
    # The row as the gate wrote it before answers had a version: SendOut's fields and Meta's answer.
    await store(engine, first.json()["id"], {**first.json(), "meta": meta_answer})
    again = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "old"})
    assert again.status_code == 201 and again.json() == first.json()
    assert len(meta.requests) == 1


async def test_a_pass_through_send_stored_before_versions_replays_meta_answer(
    gate: Gated, meta: Meta
) -> None:
    client, engine = gate
    await open_window(client)
    body = {
        "messaging_product": "whatsapp",
        "to": "+55 11 98765-4321",
        "type": "text",
        "text": {"body": "hi"},
    }
    url = f"/graph/v25.0/{PN}/messages"
    first = await client.post(url, json=body, headers={"Idempotency-Key": "old"})
    assert first.status_code == 200, first.text
    async with engine.connect() as conn:
        message_id = (await conn.execute(text("SELECT id FROM messages"))).scalar_one()
    legacy = await stored(engine, message_id)
    await store(engine, message_id, {**legacy.pop("out"), "meta": legacy.pop("meta")})
    again = await client.post(url, json=body, headers={"Idempotency-Key": "old"})
    assert again.status_code == 200 and again.json() == first.json() and len(meta.requests) == 1


async def test_a_refusal_stored_before_versions_replays_the_same_problem(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await open_window(client)
    meta.reply = meta_error(131047, "Re-engagement message")
    first = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "no"})
    problem = assert_problem(first, 409, "window_closed")
    await store(engine, str(problem["id"]), problem)  # the problem itself: the shape before versions
    meta.reply = meta.accept
    again = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "no"})
    assert again.status_code == 409 and again.json() == problem and len(meta.requests) == 1


async def test_an_answer_from_a_newer_gate_is_not_guessed_at(gate: Gated, meta: Meta) -> None:
    """A rolling upgrade: a replica reading a version it does not know answers 500, and sends nothing."""
    client, engine = gate
    await open_window(client)
    first = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "new"})
    await store(engine, first.json()["id"], {"version": 3, "answer": {"id": first.json()["id"]}})
    again = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "new"})
    assert_problem(again, 500, "internal_error")
    assert len(meta.requests) == 1
