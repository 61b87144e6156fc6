"""Who a message is from: groups, parent BSUIDs, and a person's ids changing (issue 11). Signed deliveries
through the app, on real PostgreSQL."""

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PN, change, delivery, inbound, status
from tests.webhook.test_webhooks import BSUID, HOUR, WA, counts, last_inbound, now, post, rows, utc, window
from window_gate.webhook.parse import OPENS_WINDOW

PARENT = "US.ENT.99887766554433221100"
NEW_WA = "5511912345678"
NEW_BSUID = "US.24817305912873645029"


def system(kind: str, **fields: str) -> dict[str, Any]:
    """Meta's system message from the customer's former ids (`from`, `from_user_id`)."""
    message = inbound(WA, user_id=BSUID, kind="system", ts=now() - 60)
    message["system"] = {"body": "User Ana changed", "type": kind, **fields}
    return message


async def test_group_message_does_not_open_members_window(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    await post(client, delivery([{**inbound(WA), "group_id": "120363025246125486@g.us"}]))
    assert (await window(client, admin_headers))["state"] == "never_opened"
    assert (await counts(engine))["inbound_messages"] == 0


async def test_failed_group_send_does_not_close_members_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await post(client, delivery([inbound(WA, ts=now() - HOUR)]))
    await post(client, delivery(statuses=[{**status(WA), "recipient_type": "group"}]))
    assert (await window(client, admin_headers))["state"] == "open"


@pytest.mark.parametrize("kind", ["edit", "revoke"])
async def test_edits_and_deletions_do_not_open_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str], kind: str
) -> None:
    assert OPENS_WINDOW[kind] is False  # a decided row, not an unknown type
    await post(client, delivery([{**inbound(WA, kind=kind), kind: {"original_message_id": "wamid.X"}}]))
    assert (await window(client, admin_headers))["state"] == "never_opened"


async def test_parent_bsuid_alone_opens_its_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    ts = now() - 60
    message = {**inbound(None, ts=ts), "from_parent_user_id": PARENT}
    await post(client, delivery([message], contacts=[{"parent_user_id": PARENT}]))
    answer = await window(client, admin_headers, PARENT)
    assert (answer["state"], last_inbound(answer)) == ("open", utc(ts))


async def test_parent_bsuid_beside_the_bsuid_names_the_same_customer(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    ts = now() - 60
    message = {**inbound(WA, user_id=BSUID, ts=ts), "from_parent_user_id": PARENT}
    await post(client, delivery([message]))
    await post(client, delivery([{**inbound(WA, user_id=BSUID, ts=ts + 1), "from_parent_user_id": PARENT}]))
    for customer in (WA, BSUID, PARENT):
        assert last_inbound(await window(client, admin_headers, customer)) == utc(ts + 1), customer
    assert (await counts(engine))["customers"] == 1
    assert await rows(engine, "SELECT source FROM customer_aliases WHERE alias = :a", a=PARENT) == [
        ("parent_user_id",)
    ]


@pytest.mark.parametrize(
    "fields",
    [{"wa_id": NEW_WA, "user_id": NEW_BSUID}, {"new_wa_id": NEW_WA}],
    ids=["current shape", "older shape"],
)
async def test_changed_number_keeps_the_window_and_opt_outs(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], fields: dict[str, str]
) -> None:
    ts = now() - HOUR
    await post(client, delivery([inbound(WA, user_id=BSUID, ts=ts)]))
    assert (await client.put(f"/v1/opt-outs/{PN}/{WA}", headers=admin_headers)).status_code == 200
    await post(client, delivery([system("user_changed_number", **fields)]))
    answer = await window(client, admin_headers, NEW_WA)
    assert (answer["state"], last_inbound(answer)) == ("open", utc(ts))
    assert (await counts(engine))["customers"] == 1
    opted_out = await rows(
        engine,
        "SELECT c.category FROM consents c JOIN customer_aliases a USING (customer_id)"
        " WHERE a.alias = :new AND c.opted_out",
        new=NEW_WA,
    )
    assert opted_out == [("marketing",)]


async def test_changed_bsuid_keeps_the_window(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    ts = now() - HOUR
    await post(client, delivery([inbound(None, user_id=BSUID, ts=ts)], contacts=[{"user_id": BSUID}]))
    message = system("user_changed_user_id", user_id=NEW_BSUID)
    del message["from"]
    await post(client, delivery([message], contacts=[{"user_id": NEW_BSUID}]))
    answer = await window(client, admin_headers, NEW_BSUID)
    assert (answer["state"], last_inbound(answer)) == ("open", utc(ts))


async def test_user_id_update_links_the_new_bsuid(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    ts = now() - HOUR
    await post(client, delivery([inbound(WA, user_id=BSUID, ts=ts)]))
    update = {"wa_id": WA, "user_id": {"previous": BSUID, "current": NEW_BSUID}, "timestamp": str(now())}
    await post(
        client, change("user_id_update", {"messaging_product": "whatsapp", "user_id_update": [update]})
    )
    assert last_inbound(await window(client, admin_headers, NEW_BSUID)) == utc(ts)
    assert (await counts(engine))["customers"] == 1


async def test_new_number_that_wrote_first_is_merged_keeping_the_latest_window(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    t = now()
    await post(client, delivery([inbound(WA, user_id=BSUID, ts=t - 3 * HOUR)]))
    await post(client, delivery([inbound(NEW_WA, ts=t - HOUR)]))
    assert (await counts(engine))["customers"] == 2
    await post(client, delivery([system("user_changed_number", wa_id=NEW_WA)]))
    for customer in (WA, BSUID, NEW_WA):
        assert last_inbound(await window(client, admin_headers, customer)) == utc(t - HOUR), customer
    assert (await counts(engine))["customers"] == 1
