"""Webhook fields besides messages that the gate keeps: a number's quality and messaging limit
(phone_number_quality_update), its account's restrictions, ban and pricing (account_update), and the
business's own messages echoed from the WhatsApp Business app (smb_message_echoes). Signed deliveries
through the app, real PostgreSQL."""

import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PN, WABA, change, delivery, inbound, one_entry
from tests.upstream import Gated, open_window, text_message
from tests.webhook.test_grouped_ingest import counter
from tests.webhook.test_webhooks import PN2, WA, now, post, rows, window
from window_gate.webhook import repository as webhooks

DISPLAY = "15550001111"  # the display number tests/factories.py puts in every delivery's metadata
DAY = 86_400


def meta_change(
    field: str, value: dict[str, Any], *, at: float | None = None, waba: str = WABA
) -> dict[str, Any]:
    """A change as Meta sends account-level fields: no metadata, the WABA as entry id, entry.time."""
    entry = {
        "id": waba,
        "time": int(at if at is not None else now()),
        "changes": [{"field": field, "value": value}],
    }
    return {"object": "whatsapp_business_account", "entry": [entry]}


def quality(event: str, *, display: str = DISPLAY, at: float | None = None, **limits: str) -> dict[str, Any]:
    return meta_change(
        "phone_number_quality_update", {"display_phone_number": display, "event": event, **limits}, at=at
    )


def restriction(*restrictions: tuple[str, object], at: float | None = None) -> dict[str, Any]:
    info = [{"restriction_type": kind, "expiration": expiration} for kind, expiration in restrictions]
    return meta_change("account_update", {"event": "ACCOUNT_RESTRICTION", "restriction_info": info}, at=at)


def echo(to: str = WA, *, message_id: str | None = None) -> dict[str, Any]:
    message = inbound(DISPLAY, message_id=message_id)
    return {**message, "to": to}


async def number_of(client: httpx.AsyncClient, headers: dict[str, str], customer: str = WA) -> Any:
    return (await window(client, headers, customer))["phone_number"]


async def known_number(client: httpx.AsyncClient) -> None:
    """Any delivery about the number teaches the gate its display number (quality updates name no id)."""
    await post(client, delivery([inbound(WA, ts=now() - 60)]))


# --- phone_number_quality_update ----------------------------------------------------------------------------


async def test_quality_update_shows_in_every_window_of_the_number(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await known_number(client)
    assert await number_of(client, admin_headers) is None  # nothing said yet
    sent_at = now() - 120
    await post(client, quality("FLAGGED", at=sent_at, max_daily_conversations_per_business="TIER_2K"))
    expected: dict[str, Any] = {
        "quality_event": "FLAGGED",
        "messaging_limit_tier": "TIER_2K",
        "quality_updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sent_at)),
        "restrictions": [],
        "account_ban_state": None,
    }
    assert await number_of(client, admin_headers) == expected
    never_seen = await window(client, admin_headers, "5511900000000")
    assert (never_seen["state"], never_seen["phone_number"]) == ("never_opened", expected)
    other = await window(client, admin_headers, pn=PN2)
    assert other["phone_number"] is None  # another number


@pytest.mark.parametrize(
    "limits",
    [{"current_limit": "TIER_10K"}, {"current_limit": "TIER_10K", "old_limit": "TIER_2K"}],
    ids=["current_limit", "with old_limit"],
)
async def test_quality_update_reads_the_older_limit_field_too(
    client: httpx.AsyncClient, admin_headers: dict[str, str], limits: dict[str, str]
) -> None:
    await known_number(client)
    payload = quality("UPGRADE")
    payload["entry"][0]["changes"][0]["value"].update(limits)
    await post(client, payload)
    assert (await number_of(client, admin_headers))["messaging_limit_tier"] == "TIER_10K"


async def test_older_quality_update_delivered_late_changes_nothing(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await known_number(client)
    await post(client, quality("UNFLAGGED", at=now() - 60, current_limit="TIER_10K"))
    await post(client, quality("FLAGGED", at=now() - 3600, current_limit="TIER_2K"))
    number = await number_of(client, admin_headers)
    assert (number["quality_event"], number["messaging_limit_tier"]) == ("UNFLAGGED", "TIER_10K")
    await post(client, quality("FLAGGED", at=now() - 30))  # no limit named: the last one stays
    number = await number_of(client, admin_headers)
    assert (number["quality_event"], number["messaging_limit_tier"]) == ("FLAGGED", "TIER_10K")


async def test_quality_update_and_the_numbers_first_message_in_one_delivery(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Meta batches changes: the display number learnt from the same delivery counts."""
    first = delivery([inbound(WA, ts=now() - 60)])
    await post(client, one_entry(first, quality("ONBOARDING", display="+1 555-000-1111")))
    assert (await number_of(client, admin_headers))["quality_event"] == "ONBOARDING"


async def test_quality_update_for_a_number_never_seen_is_kept_and_ignored(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = counter("phone_number_quality_update", "unknown_number")
    payload = quality("FLAGGED", display="4930000000", current_limit="TIER_250")
    await post(client, payload)
    assert counter("phone_number_quality_update", "unknown_number") - before == 1
    assert await rows(engine, "SELECT count(*) FROM webhook_deliveries WHERE error IS NULL") == [(1,)]
    assert await rows(engine, "SELECT count(*) FROM phone_numbers WHERE quality_event IS NOT NULL") == [(0,)]


# --- account_update -----------------------------------------------------------------------------------------


async def test_account_restrictions_in_force_show_and_sends_still_pass(
    gate: Gated, admin_headers: dict[str, str]
) -> None:
    """Store and show, never refuse: Meta refuses what a restriction forbids."""
    client, _ = gate
    await open_window(client)
    later = now() + 3 * DAY
    iso_later = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(later + DAY))
    await post(
        client,
        restriction(
            ("RESTRICTED_BIZ_INITIATED_MESSAGING", later),  # Unix seconds (as in pywa's test data)
            ("RESTRICTED_CUSTOMER_INITIATED_MESSAGING", iso_later),  # ISO 8601 (as integrators report it)
            ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", now() - DAY),  # over already
        ),
    )
    number = await number_of(client, admin_headers, "551187654321")
    assert [(r["type"], r["expires_at"][:19]) for r in number["restrictions"]] == [
        ("RESTRICTED_BIZ_INITIATED_MESSAGING", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(later))),
        ("RESTRICTED_CUSTOMER_INITIATED_MESSAGING", iso_later[:19]),
    ]
    r = await client.post("/v1/messages", json=text_message())
    assert r.status_code == 201, r.text
    assert len(r.json()["window"]["phone_number"]["restrictions"]) == 2


async def test_a_newer_restriction_event_replaces_the_list_an_older_one_does_not(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await known_number(client)
    await post(client, restriction(("RESTRICTED_BIZ_INITIATED_MESSAGING", now() + DAY), at=now() - 60))
    await post(client, restriction(at=now() - 30))  # lifted: no restriction left
    await post(client, restriction(("RESTRICTED_ADD_PHONE_NUMBER_ACTION", now() + DAY), at=now() - 3600))
    assert await number_of(client, admin_headers) is None


async def test_account_ban_state_shows(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    await known_number(client)
    ban = {"waba_ban_state": "SCHEDULE_FOR_DISABLE", "waba_ban_date": "December 9, 2026"}
    await post(client, meta_change("account_update", {"event": "DISABLED_UPDATE", "ban_info": ban}))
    assert (await number_of(client, admin_headers))["account_ban_state"] == "SCHEDULE_FOR_DISABLE"


def volume_tier(
    tier: str, updated: int, *, category: str = "UTILITY", region: str = "India"
) -> dict[str, Any]:
    info = {
        "tier_update_time": updated,
        "pricing_category": category,
        "tier": tier,
        "effective_month": "2026-12",
        "region": region,
    }
    return meta_change(
        "account_update", {"event": "VOLUME_BASED_PRICING_TIER_UPDATE", "volume_tier_info": info}
    )


async def test_pricing_facts_of_the_account_are_kept_latest_each(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    t = now()
    for payload in (
        volume_tier("25000001:50000000", t - 100),
        volume_tier("1:25000000", t - 200),  # older, delivered late
        volume_tier("1:1000000", t - 50, category="MARKETING", region="Brazil"),
    ):
        await post(client, payload)
    eligibility = {"exception_countries": [{"country_code": "ID", "start_time": t + DAY}], "start_time": t}
    await post(
        client,
        meta_change(
            "account_update",
            {
                "event": "AUTH_INTL_PRICE_ELIGIBILITY_UPDATE",
                "auth_international_rate_eligibility": eligibility,
            },
        ),
    )
    [(tiers, auth)] = await rows(engine, "SELECT volume_tiers, auth_international FROM business_accounts")
    assert {key: value["tier"] for key, value in tiers.items()} == {
        "UTILITY/INDIA": "25000001:50000000",
        "MARKETING/BRAZIL": "1:1000000",
    }
    assert auth == eligibility


async def test_account_facts_arriving_before_any_number_are_kept(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """An account's facts need no number: they show once the gate learns the account's numbers."""
    await post(client, restriction(("RESTRICTED_BIZ_INITIATED_MESSAGING", now() + DAY)))
    assert await number_of(client, admin_headers) is None
    await known_number(client)
    assert len((await number_of(client, admin_headers))["restrictions"]) == 1


# --- echoes of the business's own messages ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["smb_message_echoes", "message_echoes"])
async def test_business_echo_is_recorded_once_and_never_opens_the_window(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], field: str
) -> None:
    message_id = f"wamid.{uuid.uuid4().hex}"
    payload = change(field, {"message_echoes": [echo("+55 11 98765-4321", message_id=message_id)]})
    await post(client, payload)
    await post(client, payload)  # Meta delivers again
    assert await rows(engine, "SELECT message_id, phone_number_id, recipient, type FROM message_echoes") == [
        (message_id, PN, "+55 11 98765-4321", "text")
    ]
    assert (await window(client, admin_headers))["state"] == "never_opened"
    assert await rows(engine, "SELECT count(*) FROM inbound_messages") == [(0,)]


async def test_echoes_are_purged_with_the_raw_deliveries(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for name in ("old", "new"):
        await post(
            client, change("smb_message_echoes", {"message_echoes": [echo(message_id=f"wamid.{name}")]})
        )
    async with engine.begin() as conn:
        aged = "UPDATE message_echoes SET received_at = now() - interval '31 days' WHERE message_id = 'wamid.old'"
        await conn.execute(text(aged))
        await webhooks.purge(conn, 30)
    assert await rows(engine, "SELECT message_id FROM message_echoes") == [("wamid.new",)]


# --- what the gate does not know ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        meta_change("business_capability_update", {"max_daily_conversation_per_phone": 1000}),
        meta_change(
            "account_update", {"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}}
        ),
        meta_change(
            "account_update", {"event": "SOMETHING_NEW", "restriction_info": [{"restriction_type": "X"}]}
        ),
        meta_change("account_update", {"event": "ACCOUNT_RESTRICTION"}, waba=""),
        quality("", current_limit="TIER_250"),
        change("smb_message_echoes", {"message_echoes": [{"id": "wamid.x", "timestamp": "soon"}]}),
    ],
    ids=[
        "unknown field",
        "account event not kept",
        "unknown account event",
        "no account id",
        "no event",
        "echo without time",
    ],
)
async def test_unknown_fields_and_events_are_stored_and_ignored(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], payload: dict[str, Any]
) -> None:
    await known_number(client)
    await post(client, payload)
    assert await rows(engine, "SELECT count(*) FROM webhook_deliveries WHERE error IS NULL") == [(2,)]
    assert await rows(engine, "SELECT count(*) FROM business_accounts") == [(0,)]
    assert await rows(engine, "SELECT count(*) FROM message_echoes") == [(0,)]
    assert await number_of(client, admin_headers) is None
