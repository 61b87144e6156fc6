"""ALLOW_LISTED_NUMBERS_ONLY: only registered numbers are served (404 unknown_phone_number); webhooks for
others are kept, applied to nothing (a delivery naming both: applied for the registered numbers only)."""

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem, bearer, empty, make_key
from tests.factories import PN, delivery, inbound, signed
from tests.upstream import WA, count, text_message
from window_gate.app import create_app
from window_gate.config import Settings


@pytest.fixture
async def listed(
    settings: Settings, upstream: httpx.AsyncBaseTransport
) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncEngine]]:
    app = create_app(settings.model_copy(update={"allow_listed_numbers_only": True}), upstream)
    async with LifespanManager(app) as manager:
        engine = app.state.gate.engine
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://g"
        ) as client:
            client.headers.update(bearer(await make_key(engine)))
            yield client, engine
        await empty(str(settings.database_url))


async def test_an_unregistered_number_is_not_served_and_its_webhooks_are_kept_unapplied(
    listed: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    client, engine = listed
    body, headers = signed(delivery([inbound(WA)]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    assert await count(engine, "windows") == 0
    async with engine.connect() as conn:
        [error] = (await conn.execute(text("SELECT error FROM webhook_deliveries"))).scalars().all()
    assert error.startswith("ALLOW_LISTED_NUMBERS_ONLY") and PN in error

    assert_problem(await client.get(f"/v1/windows/{PN}/{WA}"), 404, "unknown_phone_number")
    assert_problem(await client.post("/v1/messages", json=text_message()), 404, "unknown_phone_number")
    assert await count(engine, "messages") == 0

    assert (await client.put(f"/v1/phone-numbers/{PN}", json={"time_zone": "UTC"})).status_code == 200
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    window = await client.get(f"/v1/windows/{PN}/{WA}")
    assert window.status_code == 200 and window.json()["state"] == "open"
    assert (await client.post("/v1/messages", json=text_message())).status_code == 201


async def test_a_delivery_naming_registered_and_unregistered_numbers_is_applied_for_the_registered_only(
    listed: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    client, engine = listed
    other = "109876543210"
    assert (await client.put(f"/v1/phone-numbers/{PN}", json={"time_zone": "UTC"})).status_code == 200
    mixed = delivery([inbound(WA)])
    [unregistered] = delivery([inbound(WA)], phone_number_id=other)["entry"]
    mixed["entry"].append(unregistered)
    body, headers = signed(mixed)
    before = await left_out(client)
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200

    async with engine.connect() as conn:
        windows = (await conn.execute(text("SELECT phone_number_id FROM windows"))).scalars().all()
        [error] = (await conn.execute(text("SELECT error FROM webhook_deliveries"))).scalars().all()
    assert windows == [PN] and error is None
    assert await left_out(client) == before + 1


async def left_out(client: httpx.AsyncClient) -> float:
    """Changes left out for an unregistered number so far, as /metrics counts them (this process's)."""
    series = 'window_gate_webhook_messages_total{outcome="not_registered",type="messages"} '
    lines = (await client.get("/metrics")).text.splitlines()
    return sum(float(line.removeprefix(series)) for line in lines if line.startswith(series))
