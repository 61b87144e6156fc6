"""Meta's webhooks over HTTP, against real PostgreSQL: what opens, closes, links and is kept."""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem
from tests.factories import (
    PN,
    call,
    change,
    delivery,
    fep_status,
    inbound,
    many_entries,
    one_entry,
    referral,
    sign_raw,
    signed,
    status,
)
from window_gate.app import create_app
from window_gate.config import SANDBOX_APP_SECRET, SANDBOX_VERIFY_TOKEN, load_settings
from window_gate.kit import Gate
from window_gate.sandbox import in_process
from window_gate.webhook.parse import OPENS_WINDOW
from window_gate.webhook.service import DeliveryRecorder

HOOK = "/webhooks/whatsapp"
PN2 = "106540352242923"
WA = "5511987654321"
BSUID = "US.13491208655302741918"
HOUR = 3600
WRITTEN_TABLES = ("webhook_deliveries", "inbound_messages", "windows", "customer_aliases", "customers")
MAX_BODY = 3 * 1024 * 1024


# --- helpers -----------------------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def post(client: httpx.AsyncClient, payload: dict[str, Any], secret: str = SANDBOX_APP_SECRET) -> None:
    body, headers = signed(payload, secret)
    r = await client.post(HOOK, content=body, headers=headers)
    assert r.status_code == 200, r.text


async def window(
    client: httpx.AsyncClient, headers: dict[str, str], customer: str = WA, pn: str = PN
) -> dict[str, Any]:
    r = await client.get(f"/v1/windows/{pn}/{customer}", headers=headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def last_inbound(answer: dict[str, Any]) -> datetime | None:
    value = answer["last_inbound_at"]
    return None if value is None else datetime.fromisoformat(value)


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


def groups_of(state: Gate) -> list[int]:
    """The size of every group the delivery recorder writes from now on."""
    sizes: list[int] = []
    recorder = state.part(DeliveryRecorder)
    run = recorder.run

    async def counted(items: list[Any]) -> list[Any]:
        sizes.append(len(items))
        return await run(items)

    recorder.run = counted
    return sizes


async def counts(engine: AsyncEngine) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in WRITTEN_TABLES)
    return {name: n for name, n in await rows(engine, sql)}


NOTHING_WRITTEN = dict.fromkeys(WRITTEN_TABLES, 0)


@asynccontextmanager
async def other_gate(database_url: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """A second app on the same test database, configured differently (tables still emptied by `engine`)."""
    settings = load_settings(database_url=database_url, api_key_cache_seconds=0, **overrides)
    app = create_app(settings, in_process)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            yield client


# --- verification handshake ----------------------------------------------------------------------------


def handshake(token: str, mode: str = "subscribe") -> dict[str, str]:
    return {"hub.mode": mode, "hub.verify_token": token, "hub.challenge": "1158201444"}


async def test_verification_handshake_echoes_challenge(client: httpx.AsyncClient) -> None:
    r = await client.get(HOOK, params=handshake(SANDBOX_VERIFY_TOKEN))
    assert r.status_code == 200
    assert r.text == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        handshake("wrong-token"),
        handshake(""),
        handshake(SANDBOX_VERIFY_TOKEN, mode="unsubscribe"),
        {"hub.challenge": "1158201444"},
    ],
    ids=["wrong token", "empty token", "wrong mode", "no token"],
)
async def test_verification_refused_without_right_token(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    r = await client.get(HOOK, params=params)
    assert_problem(r, 403, "verification_failed")
    assert "1158201444" not in r.text


async def test_configured_verify_token_replaces_sandbox_token(database_url: str, engine: AsyncEngine) -> None:
    async with other_gate(
        database_url, sandbox=False, graph_access_token="t", app_secret="s", verify_token="ops-token"
    ) as gate:
        assert (await gate.get(HOOK, params=handshake("ops-token"))).text == "1158201444"
        assert_problem(
            await gate.get(HOOK, params=handshake(SANDBOX_VERIFY_TOKEN)), 403, "verification_failed"
        )


# --- signatures --------------------------------------------------------------------------------------------


SIG = "X-Hub-Signature-256"


def _good(body: bytes) -> str:
    return sign_raw(body)[SIG]


# Each builds the headers for the very body that is posted, so only the signature is wrong.
BAD_SIGNATURES: dict[str, Callable[[bytes], dict[str, str]]] = {
    "missing": lambda body: {},
    "empty": lambda body: {SIG: ""},
    "garbage": lambda body: {SIG: "sha256=deadbeef"},
    "other secret": lambda body: sign_raw(body, "not-the-app-secret"),
    "re-serialized body": lambda body: sign_raw(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)),
    "one byte short": lambda body: sign_raw(body[:-1]),
    "no sha256= prefix": lambda body: {SIG: _good(body).removeprefix("sha256=")},
    "sha1 scheme": lambda body: {SIG: _good(body).replace("sha256=", "sha1=")},
    "twice": lambda body: {SIG: _good(body) + "," + _good(body)},
    "X-Hub-Signature header": lambda body: {"X-Hub-Signature": _good(body)},
}


@pytest.mark.parametrize("name", BAD_SIGNATURES)
async def test_badly_signed_delivery_refused_and_nothing_written(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], name: str
) -> None:
    body = orjson.dumps(delivery([inbound(WA), inbound("5215512345678")], [status(WA)]))
    r = await client.post(HOOK, content=body, headers=BAD_SIGNATURES[name](body))
    assert_problem(r, 401, "unauthorized")
    assert await counts(engine) == NOTHING_WRITTEN
    assert (await window(client, admin_headers))["state"] == "never_opened"
    # The same bytes, rightly signed, are accepted: the signature alone made the difference.
    assert (await client.post(HOOK, content=body, headers=sign_raw(body))).status_code == 200
    assert (await window(client, admin_headers))["state"] == "closed_by_meta"


async def test_each_configured_app_secret_is_accepted(database_url: str, engine: AsyncEngine) -> None:
    async with other_gate(database_url, sandbox=True, app_secret=" first , second ") as gate:
        for secret in ("first", "second"):
            body, headers = signed(delivery([inbound(WA)]), secret)
            assert (await gate.post(HOOK, content=body, headers=headers)).status_code == 200
        for secret in (SANDBOX_APP_SECRET, "first,second", "third", ""):
            body, headers = signed(delivery([inbound(WA)]), secret)
            assert_problem(await gate.post(HOOK, content=body, headers=headers), 401, "unauthorized")
    assert (await counts(engine))["webhook_deliveries"] == 2
    assert (await counts(engine))["inbound_messages"] == 2


# --- what opens the window -------------------------------------------------------------------------------

OPENERS = sorted(kind for kind, opens in OPENS_WINDOW.items() if opens)
NON_OPENERS = ["system", "request_welcome", "ephemeral", "unknown_future_type"]


def test_opening_types_follow_the_platform_facts() -> None:
    # docs/meta-rules.md: every user-sent type opens (reaction and unsupported are unsure, so the
    # table may flip them); system messages are identity events and never open.
    certain = {"text", "image", "audio", "video", "document", "sticker", "location", "contacts"}
    certain |= {"button", "interactive", "order"}
    assert certain <= set(OPENERS)
    assert not set(NON_OPENERS) & set(OPENERS)


@pytest.mark.parametrize("kind", OPENERS)
async def test_customer_message_opens_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str], kind: str
) -> None:
    ts = now() - 60
    await post(client, delivery([inbound(WA, kind=kind, ts=ts)]))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"]) == ("open", True)
    assert last_inbound(answer) == utc(ts)


@pytest.mark.parametrize("kind", NON_OPENERS)
async def test_system_and_unknown_message_types_do_not_open_window(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], kind: str
) -> None:
    await post(client, delivery([inbound(WA, kind=kind)]))
    assert (await window(client, admin_headers))["state"] == "never_opened"
    assert await counts(engine) == {**NOTHING_WRITTEN, "webhook_deliveries": 1}


@pytest.mark.parametrize(
    "broken",
    [{"timestamp": "not-a-number"}, {"timestamp": None}, {"id": ""}, {"from": ""}],
    ids=["bad timestamp", "no timestamp", "no id", "no sender"],
)
async def test_message_missing_what_the_window_needs_does_not_open(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], broken: dict[str, Any]
) -> None:
    message = {**inbound(WA), **broken}
    await post(client, delivery([message], contacts=[{"wa_id": WA}]))
    assert (await window(client, admin_headers))["state"] == "never_opened"
    assert (await counts(engine))["inbound_messages"] == 0


async def test_user_initiated_call_opens_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    ts = now() - 60
    await post(client, change("calls", {"calls": [call(WA, ts=ts)]}))
    answer = await window(client, admin_headers)
    assert (answer["state"], last_inbound(answer)) == ("open", utc(ts))


@pytest.mark.parametrize(
    "the_call",
    [call(WA, direction="BUSINESS_INITIATED"), call(WA, event="terminate")],
    ids=["business called", "call ended"],
)
async def test_business_call_or_call_end_does_not_open_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str], the_call: dict[str, Any]
) -> None:
    await post(client, change("calls", {"calls": [the_call]}))
    assert (await window(client, admin_headers))["state"] == "never_opened"


@pytest.mark.parametrize(
    "statuses",
    [
        [status(WA, state="sent", code=None)],
        [status(WA, state="delivered", code=None), status(WA, state="read", code=None)],
        [status(WA, state="failed", code=131026)],
        [status(WA, state="failed", code=131047)],
        [fep_status(WA, expires=time.time() + 3 * 24 * HOUR)],
    ],
    ids=["sent", "delivered and read", "failed 131026", "failed 131047", "free entry point"],
)
async def test_statuses_never_open_window(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    statuses: list[dict[str, Any]],
) -> None:
    await post(client, delivery(statuses=statuses))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"], answer["last_inbound_at"]) == (
        "never_opened",
        False,
        None,
    )
    assert (await counts(engine))["inbound_messages"] == 0


async def test_business_echo_never_opens_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    echo = {**inbound("15550001111"), "to": WA}
    await post(client, change("smb_message_echoes", {"message_echoes": [echo]}))
    assert (await window(client, admin_headers))["state"] == "never_opened"
    assert (await window(client, admin_headers, "15550001111"))["state"] == "never_opened"


# --- timestamps: duplicates, order, skew ----------------------------------------------------------------


async def test_duplicate_message_id_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    ts = now() - 2 * HOUR
    await post(client, delivery([inbound(WA, ts=ts, message_id="wamid.same")]))
    # Meta redelivers the same message; a different timestamp must not move the window.
    await post(client, delivery([inbound(WA, ts=ts + HOUR, message_id="wamid.same")]))
    await post(client, delivery([inbound(WA, ts=ts + HOUR, message_id="wamid.same")]))
    assert last_inbound(await window(client, admin_headers)) == utc(ts)
    assert await counts(engine) == {
        "webhook_deliveries": 3,  # every delivery is kept raw
        "inbound_messages": 1,
        "windows": 1,
        "customer_aliases": 1,
        "customers": 1,
    }


async def test_out_of_order_deliveries_keep_latest_inbound(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    t = now()
    newest = inbound(WA, ts=t - HOUR)
    await post(client, delivery([newest]))
    await post(client, delivery([inbound(WA, ts=t - 3 * HOUR)]))
    await post(client, delivery([inbound(WA, ts=t - 5 * HOUR), inbound(WA, ts=t - 2 * HOUR)]))
    assert last_inbound(await window(client, admin_headers)) == utc(t - HOUR)
    [(message_id,)] = await rows(engine, "SELECT last_inbound_message_id FROM windows")
    assert message_id == newest["id"]
    assert (await counts(engine))["inbound_messages"] == 4


async def test_batch_in_any_order_opens_from_its_latest_message(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    t = now()
    await post(
        client, delivery([inbound(WA, ts=t - 3 * HOUR), inbound(WA, ts=t - 60), inbound(WA, ts=t - HOUR)])
    )
    assert last_inbound(await window(client, admin_headers)) == utc(t - 60)


async def test_redelivery_after_24h_of_old_message_does_not_reopen(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # Meta retries for up to 7 days: the message's own timestamp counts, not its arrival.
    await post(client, delivery([inbound(WA, ts=now() - 3 * 24 * HOUR)]))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"]) == ("expired", False)


async def test_future_timestamp_beyond_skew_clamped_to_receive_time(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    claimed = now() + 2 * HOUR
    before = datetime.now(UTC)
    await post(client, delivery([inbound(WA, ts=claimed)]))
    after = datetime.now(UTC)
    answer = await window(client, admin_headers)
    last = last_inbound(answer)
    assert last is not None and before <= last <= after
    assert answer["seconds_remaining"] <= 24 * HOUR - 60
    [(sent_at,)] = await rows(engine, "SELECT sent_at FROM inbound_messages")
    assert sent_at == utc(claimed)  # what Meta said is kept; only the window is clamped


async def test_future_timestamp_within_skew_kept(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    claimed = now() + 120
    await post(client, delivery([inbound(WA, ts=claimed)]))
    assert last_inbound(await window(client, admin_headers)) == utc(claimed)


# --- batching ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [one_entry, many_entries], ids=["changes of one entry", "several entries"])
async def test_batched_delivery_opens_window_per_number_and_customer(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], batch: Any
) -> None:
    t = now()
    a, b, c = "5511987654321", "5215512345678", "14155552671"
    payload = batch(
        delivery([inbound(a, ts=t - 10), inbound(b, ts=t - 20)]),
        delivery([inbound(a, ts=t - 30)], phone_number_id=PN2),
        delivery([inbound(c, ts=t - 40)], [status(b, ts=t - 5)]),  # also closes (PN, b)
        change("message_template_status_update", {"event": "APPROVED"}),
        change("calls", {"calls": [call(c, ts=t - 50)]}, phone_number_id=PN2),
    )
    await post(client, payload)
    expected = {
        (PN, a): ("open", t - 10),
        (PN, b): ("closed_by_meta", t - 20),
        (PN, c): ("open", t - 40),
        (PN2, a): ("open", t - 30),
        (PN2, c): ("open", t - 50),
    }
    for (pn, customer), (state, ts) in expected.items():
        answer = await window(client, admin_headers, customer, pn)
        assert (answer["state"], last_inbound(answer)) == (state, utc(ts)), (pn, customer)
    assert (await window(client, admin_headers, b, PN2))["state"] == "never_opened"
    assert await counts(engine) == {
        "webhook_deliveries": 1,
        "inbound_messages": 5,
        "windows": 5,
        "customer_aliases": 3,
        "customers": 3,
    }


# --- identities: BSUIDs, linking, merging ---------------------------------------------------------------


async def test_bsuid_only_message_opens_that_customers_window(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    ts = now() - 60
    contacts = [{"profile": {"name": "Ana"}, "user_id": BSUID, "username": "ana"}]
    await post(client, delivery([inbound(None, user_id=BSUID, ts=ts)], contacts=contacts))
    answer = await window(client, admin_headers, BSUID)
    assert (answer["state"], last_inbound(answer)) == ("open", utc(ts))
    assert answer["customer"] == {"input": BSUID, "wa_id": None, "user_id": BSUID}
    assert (await window(client, admin_headers, WA))["state"] == "never_opened"
    assert await rows(engine, "SELECT wa_id, user_id FROM customers") == [(None, BSUID)]


def linking_message(ts: int, how: str) -> dict[str, Any]:
    if how == "from_user_id":
        return delivery([inbound(WA, user_id=BSUID, ts=ts)])
    return delivery([inbound(WA, ts=ts)], contacts=[{"wa_id": WA, "user_id": BSUID}])


@pytest.mark.parametrize("how", ["from_user_id", "contacts"])
async def test_payload_with_wa_id_and_bsuid_links_them(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], how: str
) -> None:
    t = now()
    await post(
        client, delivery([inbound(None, user_id=BSUID, ts=t - 2 * HOUR)], contacts=[{"user_id": BSUID}])
    )
    await post(client, linking_message(t - HOUR, how))
    by_wa, by_bsuid = await window(client, admin_headers, WA), await window(client, admin_headers, BSUID)
    for answer in (by_wa, by_bsuid):
        assert (answer["state"], last_inbound(answer)) == ("open", utc(t - HOUR))
        assert (answer["customer"]["wa_id"], answer["customer"]["user_id"]) == (WA, BSUID)
    assert await rows(engine, "SELECT wa_id, user_id FROM customers") == [(WA, BSUID)]
    assert (await counts(engine))["windows"] == 1


async def test_status_with_only_bsuid_closes_window_of_linked_customer(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    t = now()
    await post(client, linking_message(t - HOUR, "from_user_id"))
    failed = {**status(WA, ts=t - 60), "recipient_user_id": BSUID}
    del failed["recipient_id"]
    await post(client, delivery(statuses=[failed]))
    assert (await window(client, admin_headers, "+55 11 98765-4321"))["state"] == "closed_by_meta"


@pytest.mark.parametrize("first", ["wa_id", "bsuid"], ids=lambda v: f"{v} seen first")
@pytest.mark.parametrize("newer", ["wa_id", "bsuid"], ids=lambda v: f"{v} wrote last")
async def test_merging_two_known_customers_keeps_latest_window(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str], first: str, newer: str
) -> None:
    t = now()
    wa_ts, bsuid_ts = (t - HOUR, t - 3 * HOUR) if newer == "wa_id" else (t - 3 * HOUR, t - HOUR)
    by_wa = delivery([inbound(WA, ts=wa_ts)])
    by_bsuid = delivery([inbound(None, user_id=BSUID, ts=bsuid_ts)], contacts=[{"user_id": BSUID}])
    for payload in (by_wa, by_bsuid) if first == "wa_id" else (by_bsuid, by_wa):
        await post(client, payload)
    await post(client, delivery([inbound(None, user_id=BSUID, ts=t - 30)], phone_number_id=PN2, contacts=[]))
    assert (await counts(engine))["customers"] == 2
    # An older message finally tells Meta's pairing: the two customers are one.
    await post(client, linking_message(t - 5 * HOUR, "from_user_id"))
    for customer in (WA, BSUID, "+55 11 8765-4321"):
        answer = await window(client, admin_headers, customer)
        assert (answer["state"], last_inbound(answer)) == ("open", utc(t - HOUR)), customer
        assert (answer["customer"]["wa_id"], answer["customer"]["user_id"]) == (WA, BSUID)
        assert last_inbound(await window(client, admin_headers, customer, PN2)) == utc(t - 30)
    assert await counts(engine) == {
        "webhook_deliveries": 4,
        "inbound_messages": 4,
        "windows": 2,
        "customer_aliases": 2,
        "customers": 1,
    }
    owners = await rows(
        engine, "SELECT DISTINCT customer_id FROM inbound_messages UNION SELECT customer_id FROM windows"
    )
    assert len(owners) == 1


async def test_brazilian_number_without_ninth_digit_found_by_either_spelling(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await post(client, delivery([inbound("551187654321")]))
    for spelling in ("+55 11 98765-4321", "5511987654321", "551187654321", "+55 (11) 8765-4321"):
        answer = await window(client, admin_headers, spelling)
        assert answer["state"] == "open", spelling
        assert answer["customer"]["wa_id"] == "551187654321"


# --- free entry point ------------------------------------------------------------------------------------


async def test_referral_recorded_as_free_entry_point_not_yet_started(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    ts, ad = now() - HOUR, referral()
    await post(client, delivery([inbound(WA, ts=ts, referral=ad)]))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"]) == ("open", True)
    fep = answer["free_entry_point"]
    assert (fep["active"], fep["expires_at"], fep["started_at"]) == (False, None, None)
    assert datetime.fromisoformat(fep["referral_at"]) == utc(ts)
    assert datetime.fromisoformat(fep["reply_by"]) == utc(ts + 24 * HOUR)
    assert await rows(engine, "SELECT referral FROM windows") == [(ad,)]


async def test_latest_referral_kept_whatever_the_delivery_order(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    t, latest = now(), referral("latest ad")
    await post(client, delivery([inbound(WA, ts=t - 3 * HOUR, referral=referral("older ad"))]))
    await post(client, delivery([inbound(WA, ts=t - 2 * HOUR, referral=latest)]))
    await post(client, delivery([inbound(WA, ts=t - HOUR)]))  # a plain message keeps the referral
    await post(client, delivery([inbound(WA, ts=t - 4 * HOUR, referral=referral("oldest ad"))]))
    fep = (await window(client, admin_headers))["free_entry_point"]
    assert fep is not None and datetime.fromisoformat(fep["referral_at"]) == utc(t - 2 * HOUR)
    assert await rows(engine, "SELECT referral FROM windows") == [(latest,)]


async def test_free_entry_point_never_extends_free_form(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    t = now()
    await post(client, delivery([inbound(WA, ts=t - 25 * HOUR, referral=referral())]))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"], answer["free_entry_point"]["active"]) == (
        "expired",
        False,
        False,
    )
    # Meta says a free-entry-point window runs for two more days: price, not permission.
    await post(client, delivery(statuses=[fep_status(WA, ts=t - 60, expires=t + 48 * HOUR)]))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"], answer["seconds_remaining"]) == (
        "expired",
        False,
        0,
    )
    assert answer["free_entry_point"]["active"] is True
    assert datetime.fromisoformat(answer["free_entry_point"]["expires_at"]) == utc(t + 48 * HOUR)


# --- Meta's 131047 verdict ----------------------------------------------------------------------------------


async def test_failed_131047_closes_window_until_newer_inbound(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    t = now()
    await post(client, delivery([inbound(WA, ts=t - 2 * HOUR)]))
    assert (await window(client, admin_headers))["state"] == "open"
    await post(client, delivery(statuses=[status(WA, ts=t - HOUR, code=131047)]))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"], answer["seconds_remaining"]) == (
        "closed_by_meta",
        False,
        0,
    )
    # A late redelivery of an older message does not reopen; a newer one does.
    await post(client, delivery([inbound(WA, ts=t - 90 * 60)]))
    assert (await window(client, admin_headers))["state"] == "closed_by_meta"
    await post(client, delivery([inbound(WA, ts=t - 60)]))
    answer = await window(client, admin_headers)
    assert (answer["state"], answer["can_send_free_form"], last_inbound(answer)) == (
        "open",
        True,
        utc(t - 60),
    )


async def test_older_closure_delivered_late_does_not_close_newer_window(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    t = now()
    await post(client, delivery([inbound(WA, ts=t - 60)]))
    await post(client, delivery(statuses=[status(WA, ts=t - HOUR, code=131047)]))
    assert (await window(client, admin_headers))["state"] == "open"


# --- raw deliveries -----------------------------------------------------------------------------------------


async def test_raw_delivery_stored_byte_for_byte(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    payload = orjson.dumps(delivery([inbound(WA)])).decode()
    body = (
        payload.replace('"entry"', '\n  "zz_unknown": {"é": "\\u00e9 ✓"} ,\r\n\t"entry"', 1)
        .replace(":", " : ")
        .join([" \n", "\n\n"])  # whitespace around the JSON is part of what Meta signed
        .encode()
    )
    r = await client.post(HOOK, content=body, headers=sign_raw(body))
    assert r.status_code == 200, r.text
    assert await rows(engine, "SELECT body, error FROM webhook_deliveries") == [(body, None)]
    assert (await counts(engine))["inbound_messages"] == 1


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"object": "whatsapp_business_account", "entry": [', "JSONDecodeError"),
        (b"\xff\xfe not utf-8", "JSONDecodeError"),
        (b"", "JSONDecodeError"),
        (b"[1, 2, 3]", None),
        (b'"just a string"', None),
        (b'{"object": "page", "entry": [{"id": "1", "changes": []}]}', None),
        (b'{"object": "whatsapp_business_account", "entry": "not a list"}', None),
        (b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages"}]}]}', None),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {"messages": [1]}}]}]}',
            None,
        ),
        (
            orjson.dumps(
                change("account_update", {"event": "VERIFIED_ACCOUNT", "new_field": [1, {"x": None}]})
            ),
            None,
        ),
        (orjson.dumps(delivery([inbound(WA)], phone_number_id="")), None),
    ],
    ids=[
        "truncated JSON",
        "not UTF-8",
        "empty body",
        "JSON array",
        "JSON string",
        "unknown object",
        "entry not a list",
        "change without value",
        "change without field",
        "unknown field",
        "messages without phone number id",
    ],
)
async def test_well_signed_oddities_acknowledged_and_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes, error: str | None
) -> None:
    r = await client.post(HOOK, content=body, headers=sign_raw(body))
    assert r.status_code == 200, r.text
    [(stored, stored_error)] = await rows(engine, "SELECT body, error FROM webhook_deliveries")
    assert stored == body
    assert stored_error is None if error is None else stored_error.startswith(error)
    assert (await counts(engine))["windows"] == 0


RANDOM_TEXT = "".join(hashlib.sha256(bytes([i])).hexdigest() for i in range(200))  # incompressible


def _odd_value(**patch: Any) -> dict[str, Any]:
    payload = delivery([inbound(WA)], [status(WA)])
    payload["entry"][0]["changes"][0]["value"].update(patch)
    return payload


@pytest.mark.parametrize(
    "payload",
    [
        _odd_value(contacts=[{"wa_id": {"nested": 1}, "user_id": ["x"]}]),
        _odd_value(contacts=[{"user_id": {"nested": 1}, "wa_id": WA}]),
        _odd_value(statuses=[{**status(WA), "errors": [{"code": [131047]}]}]),
        _odd_value(statuses=[{**status(WA), "errors": "boom"}]),
        _odd_value(statuses=[{**status(WA), "conversation": {"origin": "referral_conversion"}}]),
        _odd_value(messages=[{**inbound(WA), "referral": "not an object"}]),
        _odd_value(messages=[{**inbound(WA), "timestamp": "1" * 30}]),
        _odd_value(messages=[{**inbound(WA), "id": "wamid.\u0000nul"}]),
        _odd_value(messages=[inbound(WA, referral={"headline": "\u0000"})]),
        _odd_value(messages=[{**inbound(WA), "id": "wamid." + RANDOM_TEXT}]),
        _odd_value(messages=[inbound(RANDOM_TEXT)], contacts=[]),
        _odd_value(metadata={"phone_number_id": {"nested": True}}),
        _odd_value(messages={"not": "a list"}, statuses=None, contacts=None),
    ],
    ids=[
        "contact ids are objects",
        "contact user_id is an object",
        "error code is a list",
        "errors not a list",
        "origin not an object",
        "referral not an object",
        "timestamp out of range",
        "NUL in message id",
        "NUL in referral",
        "message id beyond index limit",
        "sender beyond index limit",
        "phone number id is an object",
        "messages not a list",
    ],
)
async def test_well_signed_delivery_with_wrong_types_still_acknowledged(
    client: httpx.AsyncClient, engine: AsyncEngine, payload: dict[str, Any]
) -> None:
    body, headers = signed(payload)
    r = await client.post(HOOK, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert await rows(engine, "SELECT body FROM webhook_deliveries") == [(body,)]


# --- size limits -------------------------------------------------------------------------------------------


def _streamed(body: bytes) -> Any:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    return chunks()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_body_over_3mb_refused_and_nothing_written(
    client: httpx.AsyncClient, engine: AsyncEngine, declared: bool
) -> None:
    payload = delivery([inbound(WA)])
    payload["padding"] = "x" * MAX_BODY
    body, headers = signed(payload)
    content = body if declared else _streamed(body)
    r = await client.post(HOOK, content=content, headers=headers)
    assert_problem(r, 413, "payload_too_large")
    assert await counts(engine) == NOTHING_WRITTEN


async def test_delivery_near_3mb_with_1000_messages_applied(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    t = now()
    customers = [f"5511{9_0000_0000 + i:09d}" for i in range(1000)]
    messages = [inbound(wa, ts=t - i) for i, wa in enumerate(customers)]
    payload = delivery(messages)
    pad = (MAX_BODY - len(orjson.dumps(payload)) - 4096) // len(messages)
    for m in messages:
        m["text"]["body"] = "a" * pad
    body, headers = signed(payload)
    assert MAX_BODY - 8192 < len(body) <= MAX_BODY
    r = await client.post(HOOK, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert await counts(engine) == {
        "webhook_deliveries": 1,
        "inbound_messages": 1000,
        "windows": 1000,
        "customer_aliases": 1000,
        "customers": 1000,
    }
    r = await client.post(
        "/v1/windows/check", json={"phone_number_id": PN, "customers": customers}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    windows = r.json()["windows"]
    assert [w["state"] for w in windows] == ["open"] * 1000
    assert [last_inbound(w) for w in windows] == [utc(t - i) for i in range(1000)]


# --- deliveries arriving together --------------------------------------------------------------------------


async def test_concurrent_deliveries_share_statements_each_kept_and_applied(
    app_state: tuple[httpx.AsyncClient, Gate], admin_headers: dict[str, str]
) -> None:
    """Group commit: deliveries arriving while one is being written go in one statement; each is still
    kept once and applied, and one PostgreSQL refuses (NUL in a message id) is kept with its reason alone."""
    client, state = app_state
    groups = groups_of(state)
    customers = [f"55119876{i:05d}" for i in range(20)]
    bad = delivery([{**inbound(WA), "id": "wamid.\u0000nul"}])
    bodies = [signed(delivery([inbound(c, ts=now() - 60)])) for c in customers] + [signed(bad)]
    answers = await asyncio.gather(*(client.post(HOOK, content=b, headers=h) for b, h in bodies))
    assert [r.status_code for r in answers] == [200] * 21
    assert max(groups) > 1 and sum(groups) > 21  # grouped; the group holding the refused one ran again
    kept = await rows(state.engine, "SELECT body, error FROM webhook_deliveries ORDER BY id")
    assert sorted(body for body, _ in kept) == sorted(b for b, _ in bodies)
    assert [error is not None for body, error in kept] == [body == bodies[-1][0] for body, _ in kept]
    for c in customers:
        assert (await window(client, admin_headers, c))["state"] == "open"
    assert (await window(client, admin_headers, WA))["state"] == "never_opened"
