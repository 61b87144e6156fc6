"""A send whose HTTP answer never reached the caller (its client gave up while the gate was still
talking to Meta), retried with the same Idempotency-Key: the same message, the same wamid, one request to
Meta. Over real sockets, because what is lost is the caller's connection."""

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import bearer, make_key
from tests.upstream import Meta, open_window, text_message
from window_gate.kit import Gate


async def test_a_send_whose_answer_was_lost_replays_the_same_message(
    listening: tuple[str, Gate], meta: Meta
) -> None:
    url, gate = listening
    headers = bearer(await make_key(gate.engine)) | {"Idempotency-Key": "lost-once"}
    meta.delay = 1.0  # Meta answers after the caller has given up
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        await open_window(client)
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/messages", json=text_message(), timeout=0.3)

        again = await client.post("/v1/messages", json=text_message(), timeout=10)

    assert again.status_code == 201, again.text
    sent = again.json()
    async with gate.engine.connect() as conn:
        (record,) = await conn.execute(text("SELECT id, graph_message_id, status FROM messages"))
    assert (sent["id"], sent["graph_message_id"]) == (str(record.id), "wamid.T1")
    assert record.graph_message_id == "wamid.T1" and record.status == "accepted"
    assert len(meta.requests) == 1
