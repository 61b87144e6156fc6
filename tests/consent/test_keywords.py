"""Marketing opt-outs learnt from webhooks: user_preferences and Meta's 131050."""

import time

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PN, WABA, delivery, signed, status


async def post(client: httpx.AsyncClient, payload: dict[str, object]) -> None:
    body, headers = signed(payload)
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200


def preference(wa_id: str, value: str, ts: float) -> dict[str, object]:
    item = {"wa_id": wa_id, "category": "marketing_messages", "value": value, "timestamp": str(int(ts))}
    value_obj = {
        "messaging_product": "whatsapp",
        "metadata": {"phone_number_id": PN},
        "user_preferences": [item],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": "user_preferences", "value": value_obj}]}],
    }


async def consent(engine: AsyncEngine, wa_id: str) -> tuple[bool, str] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT c.opted_out, c.source FROM consents c JOIN customer_aliases a "
                    "ON a.customer_id = c.customer_id WHERE a.alias = :wa AND c.phone_number_id = :pn"
                ),
                {"wa": wa_id, "pn": PN},
            )
        ).first()
    return (row.opted_out, row.source) if row else None


async def test_user_preferences_stop_then_resume_newest_wins(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    now = time.time()
    await post(client, preference("5511999990001", "stop", now - 60))
    assert await consent(engine, "5511999990001") == (True, "user_preferences")
    await post(client, preference("5511999990001", "resume", now))
    await post(client, preference("5511999990001", "stop", now - 30))  # late redelivery of an older word
    assert await consent(engine, "5511999990001") == (False, "user_preferences")


async def test_failed_status_131050_records_marketing_opt_out(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await post(client, delivery(statuses=[status("5511999990002", code=131050)]))
    assert await consent(engine, "5511999990002") == (True, "meta_131050")


async def test_user_preferences_signup_is_an_opt_in(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """A customer who signed up through a link wants marketing again, whatever an older stop said."""
    now = time.time()
    await post(client, preference("5511999990002", "stop", now - 60))
    await post(client, preference("5511999990002", "signup", now))
    assert await consent(engine, "5511999990002") == (False, "user_preferences")
