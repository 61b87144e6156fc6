"""The status order is one rule written twice: in Python (message/status.py) and as the SQL function
webhook ingest folds statuses with (message_status_after, migration 0009). Both are held to each other
here; the held_for_quality_assessment status goes through both roads (Meta's answer, status webhooks)."""

import itertools
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import delivery, signed
from tests.upstream import WA, Gated, Meta, template_message
from tests.webhook.test_grouped_ingest import history, status_of
from tests.webhook.test_webhooks import HOOK
from window_gate.message.status import MessageStatus, status_after

HELD = MessageStatus.HELD_FOR_QUALITY_ASSESSMENT
# Every status the gate knows, and one Meta might add (kept, final).
STATUSES = [*MessageStatus, "played"]


async def sql_after(engine: AsyncEngine, cases: list[tuple[str, list[str]]]) -> list[str]:
    sql = text(
        "SELECT message_status_after(c.cur, ARRAY(SELECT jsonb_array_elements_text(c.updates))) "
        "FROM jsonb_to_recordset(CAST(:cases AS jsonb)) AS c(n int, cur text, updates jsonb) ORDER BY c.n"
    )
    payload = json.dumps([{"n": n, "cur": c, "updates": u} for n, (c, u) in enumerate(cases)])
    async with engine.connect() as conn:
        return [str(s) for s in (await conn.execute(sql, {"cases": payload})).scalars()]


async def test_python_and_sql_status_order_agree_on_every_pair_and_sequence(engine: AsyncEngine) -> None:
    pairs = [(c, [n]) for c, n in itertools.product(STATUSES, repeat=2)]
    webhook_statuses = [HELD, "sent", "delivered", "read", "failed"]
    sequences = [
        (start, list(seq))
        for start in ("pending", "accepted", HELD)
        for seq in itertools.permutations(webhook_statuses, 3)
    ]
    cases = pairs + sequences
    assert await sql_after(engine, cases) == [status_after(c, u) for c, u in cases]


@pytest.mark.parametrize(
    ("current", "updates", "after"),
    [
        ("accepted", [HELD], HELD),
        (HELD, ["sent"], "sent"),
        (HELD, ["failed"], "failed"),
        (HELD, ["delivered", "read"], "read"),
        (HELD, ["accepted"], HELD),
        (HELD, ["pending"], HELD),
        ("sent", [HELD], "sent"),
        ("delivered", [HELD], "delivered"),
        ("read", [HELD, "sent"], "read"),
    ],
)
async def test_held_for_quality_assessment_sits_after_accepted_and_before_sent(
    engine: AsyncEngine, current: str, updates: list[str], after: str
) -> None:
    assert status_after(current, updates) == after
    assert await sql_after(engine, [(current, updates)]) == [after]


def held(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    message = {"id": "wamid.HELD1", "message_status": "held_for_quality_assessment"}
    answer: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": body["to"], "wa_id": WA}],
        "messages": [message],
    }
    return httpx.Response(200, json=answer)


async def test_a_template_meta_holds_is_recorded_held_not_accepted_then_moved_by_webhooks(
    gate: Gated, meta: Meta
) -> None:
    client, _ = gate
    meta.reply = held
    r = await client.post("/v1/messages", json=template_message())
    assert r.status_code == 201, r.text
    sent = r.json()
    assert (sent["status"], sent["graph_message_id"]) == (HELD, "wamid.HELD1")
    assert await history(client, sent) == (HELD, ["pending", HELD])
    for state in ("sent", "delivered"):
        body, headers = signed(delivery(statuses=[status_of(sent, state)]))
        assert (await client.post(HOOK, content=body, headers=headers)).status_code == 200
    assert await history(client, sent) == ("delivered", ["pending", HELD, "sent", "delivered"])


async def test_a_held_template_meta_drops_ends_failed(gate: Gated, meta: Meta) -> None:
    """Meta pauses the template after bad early feedback and drops every held message (132015)."""
    client, _ = gate
    meta.reply = held
    sent = (await client.post("/v1/messages", json=template_message())).json()
    dropped = status_of(sent, "failed", errors=[{"code": 132015, "title": "Template is paused"}])
    body, headers = signed(delivery(statuses=[dropped]))
    assert (await client.post(HOOK, content=body, headers=headers)).status_code == 200
    assert await history(client, sent) == ("failed", ["pending", HELD, "failed"])
