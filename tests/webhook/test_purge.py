"""The retention purge: inbound message ids older than WEBHOOK_RETENTION_DAYS go, younger ones and
everything else stay. Raw deliveries go by the month (tests/test_partitions.py): not row by row here."""

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import delivery, inbound, signed
from window_gate.webhook import repository as webhooks

RETENTION_DAYS = 30
AGES = {"old": 31, "almost": 29, "new": 0}  # days before now


async def test_purge_forgets_only_what_is_past_retention(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for n, name in enumerate(AGES):
        body, headers = signed(delivery([inbound(f"155500000{n:02}", message_id=f"wamid.{name}")]))
        assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    async with engine.begin() as conn:
        for name, days in AGES.items():
            age = {"id": f"wamid.{name}", "days": days}
            await conn.execute(
                text(
                    "UPDATE inbound_messages SET received_at = now() - make_interval(days => :days) WHERE message_id = :id"
                ),
                age,
            )
        windows_before = (await conn.execute(text("SELECT count(*) FROM windows"))).scalar_one()

    async with engine.begin() as conn:
        await webhooks.purge(conn, RETENTION_DAYS)

    async with engine.connect() as conn:
        kept_ids = set((await conn.execute(text("SELECT message_id FROM inbound_messages"))).scalars())
        kept_bodies = [
            bytes(b) for b in (await conn.execute(text("SELECT body FROM webhook_deliveries"))).scalars()
        ]
        windows_after = (await conn.execute(text("SELECT count(*) FROM windows"))).scalar_one()
    assert kept_ids == {"wamid.almost", "wamid.new"}
    assert len(kept_bodies) == len(AGES)
    assert windows_after == windows_before == len(AGES)  # a window outlives the ids of its messages
