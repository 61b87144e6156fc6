"""The gate's own events, on real PostgreSQL and over real sockets, verified with the Standard Webhooks
reference implementation: window.opened / expiring / closed, message.status, template.status."""

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook, WebhookVerificationError

from tests.factories import PN, WABA, delivery, inbound, signed, status
from tests.subscription.conftest import dispatch
from tests.subscription.receiver import Received, Receiver, receiving
from tests.upstream import WA as META_WA
from tests.upstream import text_message
from window_gate import jobs
from window_gate.background import registry
from window_gate.config import Settings
from window_gate.db import make_engine
from window_gate.subscription import service

HOOK = "/webhooks/whatsapp"
WA = "5511987654321"
HOUR = 3600
DAY = 24 * HOUR


async def subscribe(client: httpx.AsyncClient, headers: dict[str, str], url: str, *events: str) -> str:
    r = await client.post("/v1/subscriptions", json={"url": url, "events": list(events)}, headers=headers)
    assert r.status_code == 201, r.text
    secret: str = r.json()["secret"]
    return secret


async def post(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    body, headers = signed(payload)
    r = await client.post(HOOK, content=body, headers=headers)
    assert r.status_code == 200, r.text


def verified(secret: str, got: Received) -> dict[str, Any]:
    """The event, once Standard Webhooks' own verifier accepts its signature."""
    event: dict[str, Any] = Webhook(secret).verify(got.body, got.headers)
    assert event["id"] == got.headers["webhook-id"]
    return event


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_window_opened_once_per_opening_signed_per_standard_webhooks(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    async with receiving() as receiver:
        secret = await subscribe(client, admin_headers, receiver.url, "window.opened")
        t0 = int(time.time()) - 2 * DAY
        await post(
            client, delivery([inbound(WA, ts=t0)], phone_number_id=PN)
        )  # long closed: opens nothing now
        first = inbound(WA, ts=t0 + 2 * DAY - 60)
        await post(client, delivery([first]))
        await post(client, delivery([inbound(WA, ts=t0 + 2 * DAY - 30)]))  # the window is open: no event
        assert await dispatch(engine, settings) == 1
        (got,) = receiver.received
    event = verified(secret, got)
    assert event == {
        "id": event["id"],
        "type": "window.opened",
        "occurred_at": iso(t0 + 2 * DAY - 60),
        "phone_number_id": PN,
        "customer": {"wa_id": WA, "user_id": None},
        "data": {
            "message_id": first["id"],
            "last_inbound_at": iso(t0 + 2 * DAY - 60),
            "expires_at": iso(t0 + 3 * DAY - 60),
        },
    }
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(got.body, got.headers)  # another secret does not verify


async def test_message_status_when_a_gate_send_moves_not_on_a_repeat(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    async with receiving() as receiver:
        secret = await subscribe(client, admin_headers, receiver.url, "message.status")
        await post(client, delivery([inbound(WA)]))
        sent = await client.post("/v1/messages", json=text_message(), headers=admin_headers)
        assert sent.status_code == 201, sent.text
        wamid = sent.json()["graph_message_id"]
        for state in ("delivered", "delivered", "read"):
            st = status(WA, state=state, code=None) | {"id": wamid}
            await post(client, delivery(statuses=[st]))
        failed = status(WA, state="failed", code=131026) | {"id": wamid}  # after read: does not move it
        await post(client, delivery(statuses=[failed]))
        assert await dispatch(engine, settings) == 2
    events = sorted((verified(secret, r) for r in receiver.received), key=lambda e: e["occurred_at"])
    assert [(e["data"]["previous_status"], e["data"]["status"]) for e in events] == [
        ("accepted", "delivered"),
        ("delivered", "read"),
    ]
    assert {e["data"]["message_id"] for e in events} == {sent.json()["id"]}
    # the wa_id Meta answered for the recipient (its contacts[].wa_id)
    assert events[0]["customer"] == {"wa_id": META_WA, "user_id": None} and events[0]["phone_number_id"] == PN
    assert events[0]["data"]["graph_message_id"] == wamid and events[0]["data"]["error"] is None


async def test_window_expiring_once_before_the_end_unless_a_newer_message_moved_it(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    lead = settings.expiring_lead_seconds
    async with receiving() as receiver:
        secret = await subscribe(client, admin_headers, receiver.url, "window.expiring")
        soon = int(time.time()) - DAY + lead + 2  # expiring due in about 2 s
        await post(client, delivery([inbound(WA, ts=soon)]))
        # another customer: due in 1 s, then moved by a newer message
        moved = int(time.time()) - DAY + lead + 1
        await post(client, delivery([inbound("5511911112222", ts=moved)]))
        await post(client, delivery([inbound("5511911112222")]))
        assert await service.ring_alarms(engine, settings) == 0  # nothing due yet
        await asyncio.sleep(max(0.0, soon + DAY - lead - time.time()) + 0.2)
        assert await service.ring_alarms(engine, settings) == 1
        assert await service.ring_alarms(engine, settings) == 0  # once
        assert await dispatch(engine, settings) == 1
        (got,) = receiver.received
    event = verified(secret, got)
    assert event["type"] == "window.expiring" and event["customer"]["wa_id"] == WA
    assert event["data"] == {"last_inbound_at": iso(soon), "expires_at": iso(soon + DAY)}
    assert event["occurred_at"] == iso(soon + DAY - lead)


async def test_window_closed_when_it_expires_and_expiring_at_once_when_opened_late(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    async with receiving() as receiver:
        secret = await subscribe(client, admin_headers, receiver.url, "window.expiring", "window.closed")
        late = int(time.time()) - DAY + 2  # less than the lead left: expiring at once; closed in 2 s
        await post(client, delivery([inbound(WA, ts=late)]))
        at_once = await service.ring_alarms(engine, settings)  # expiring (closed too on a slow machine)
        assert at_once >= 1
        await asyncio.sleep(max(0.0, late + DAY - time.time()) + 0.2)
        assert at_once + await service.ring_alarms(engine, settings) == 2
        assert await dispatch(engine, settings) == 2
    events = [verified(secret, r) for r in receiver.received]
    assert sorted(e["type"] for e in events) == ["window.closed", "window.expiring"]
    closed = next(e for e in events if e["type"] == "window.closed")
    assert closed["data"] == {
        "last_inbound_at": iso(late),
        "expires_at": iso(late + DAY),
        "reason": "expired",
    }


async def test_window_closed_by_meta_at_once_and_nothing_later(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    async with receiving() as receiver:
        secret = await subscribe(client, admin_headers, receiver.url, "window.expiring", "window.closed")
        await post(client, delivery([inbound(WA, ts=time.time() - 60)]))
        await post(client, delivery(statuses=[status(WA, state="failed", code=131047)]))  # Meta: closed
        assert await dispatch(engine, settings) == 1
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM window_alarms")) == 0  # nothing more to ring
        (got,) = receiver.received
    event = verified(secret, got)
    assert event["type"] == "window.closed" and event["data"]["reason"] == "closed_by_meta"


async def test_template_status(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    async with receiving() as receiver:
        secret = await subscribe(client, admin_headers, receiver.url, "template.status")
        value = {
            "event": "PAUSED",
            "message_template_id": 1234,
            "message_template_name": "order_update",
            "message_template_language": "en",
            "reason": None,
        }
        change = {"field": "message_template_status_update", "value": value}
        await post(
            client, {"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [change]}]}
        )
        assert await dispatch(engine, settings) == 1
        (got,) = receiver.received
    event = verified(secret, got)
    assert (
        event["type"] == "template.status" and event["customer"] is None and event["phone_number_id"] is None
    )
    assert event["data"]["status"] == "PAUSED" and event["data"]["name"] == "order_update"
    assert event["data"]["waba_id"] == WABA and event["data"]["template_id"] == "1234"


async def test_no_alarms_are_kept_without_a_subscription_that_wants_them(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine
) -> None:
    await subscribe(client, admin_headers, "http://127.0.0.1:9/x", "meta.webhook", "window.opened")
    await post(client, delivery([inbound(WA)]))
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM window_alarms")) == 0
        kinds = (
            (await conn.execute(text("SELECT event_type FROM relay_deliveries ORDER BY 1"))).scalars().all()
        )
        fanout = await conn.scalar(text("SELECT count(*) FROM relay_fanout"))
    assert kinds == ["window.opened"] and fanout == 1  # meta.webhook: fanned out by the dispatcher


async def test_two_replicas_emit_a_due_expiring_once_within_5_s(
    client: httpx.AsyncClient, admin_headers: dict[str, str], settings: Settings
) -> None:
    url = str(settings.database_url)
    async with receiving(Receiver()) as receiver:
        secret = await subscribe(client, admin_headers, receiver.url, "window.expiring")
        due = time.time() + 3
        await post(client, delivery([inbound(WA, ts=due - DAY + settings.expiring_lead_seconds)]))
        async with jobs.running(settings, url, registry(), 4), jobs.running(settings, url, registry(), 4):
            (got,) = await receiver.wait_for(1, within=15)
            late = time.time() - due
            await asyncio.sleep(2)  # a second emission would have come by now
    assert late < 5, late
    assert len(receiver.received) == 1
    assert verified(secret, got)["type"] == "window.expiring"


async def test_an_event_body_is_the_same_for_every_subscriber(
    client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    other = make_engine(str(settings.database_url), 2, 5.0)
    try:
        async with receiving() as a, receiving() as b:
            await subscribe(client, admin_headers, a.url, "window.opened")
            await subscribe(client, admin_headers, b.url, "window.opened")
            await post(client, delivery([inbound(WA)]))
            await asyncio.gather(dispatch(engine, settings), dispatch(other, settings))
    finally:
        await other.dispose()
    (first,), (second,) = a.received, b.received
    assert orjson.loads(first.body) == orjson.loads(second.body)  # one event id for both
