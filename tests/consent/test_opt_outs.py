"""Marketing opt-outs: keywords, quick replies, the opt-out API, and the send path's check."""

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem, bearer, make_key
from tests.consent.test_keywords import consent, post, preference
from tests.factories import PN, delivery, inbound, signed
from window_gate.apikey.rules import Role
from window_gate.app import create_app
from window_gate.config import Settings, SettingsError, load_settings
from window_gate.consent.rules import Keywords, normalise
from window_gate.consent.service import check_marketing
from window_gate.customer.identity import parse_customer
from window_gate.errors import OptedOut
from window_gate.sandbox import in_process
from window_gate.webhook.parse import parse_delivery

OTHER_PN = "109999999999999"
ROUTE = "/v1/opt-outs/{pn}/{customer}"


def says(wa_id: str, body: str, ts: float | None = None) -> dict[str, Any]:
    """A text message from the customer."""
    message = inbound(wa_id, ts=ts)
    message["text"] = {"body": body}
    return message


def taps(wa_id: str, payload: str, label: str, ts: float | None = None) -> dict[str, Any]:
    """A quick-reply button tapped on a template."""
    message = inbound(wa_id, ts=ts, kind="button")
    message["button"] = {"payload": payload, "text": label}
    return message


async def write(client: httpx.AsyncClient, *messages: dict[str, Any]) -> None:
    await post(client, delivery(list(messages)))


# --- keywords in what the customer writes or taps ---


@pytest.mark.parametrize(
    "body",
    [
        "PARAR",
        "  sair ",
        "Cancelar.",
        "Parar promoções",
        "PARAR PROMOCOES",
        "descadastrar!",
        "baja",
        "Dar  de   BAJA",
        "Détener",
        "¡Alto!",
        "STOP",
        "stop!!",
        "Unsubscribe",
        "Stop promotions",
    ],
)
async def test_opt_out_keyword_in_any_language_case_or_accent_stops_marketing(
    client: httpx.AsyncClient, engine: AsyncEngine, body: str
) -> None:
    await write(client, says("5511999991001", body))
    assert await consent(engine, "5511999991001") == (True, "keyword")


@pytest.mark.parametrize(
    "body",
    [
        "stop by tomorrow",
        "quero cancelar meu pedido",
        "Can you stop the delivery?",
        "no me des de baja",
        "STOPP",
        "hi",
        "stop " * 30,  # too long to be a keyword: never even normalised
    ],
)
async def test_sentences_merely_containing_a_keyword_do_not_opt_out(
    client: httpx.AsyncClient, engine: AsyncEngine, body: str
) -> None:
    await write(client, says("5511999991002", body))
    assert await consent(engine, "5511999991002") is None


async def test_quick_reply_button_stop_payload_opts_out(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await write(client, taps("5511999991003", "STOP", "Não quero mais"))
    assert await consent(engine, "5511999991003") == (True, "keyword")
    # Meta's own "Stop promotions" button, localised: the label is what matches.
    await write(client, taps("5511999991004", "btn-7", "Parar promoções"))
    assert await consent(engine, "5511999991004") == (True, "keyword")
    await write(client, taps("5511999991005", "ORDER_STATUS", "Where is my order?"))
    assert await consent(engine, "5511999991005") is None


async def test_interactive_reply_title_or_id_opts_out(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    message = inbound("5511999991006", kind="interactive")
    message["interactive"] = {"type": "button_reply", "button_reply": {"id": "menu-3", "title": "Sair"}}
    await write(client, message)
    assert await consent(engine, "5511999991006") == (True, "keyword")


async def test_opt_in_keyword_resumes_marketing(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    now = time.time()
    await write(client, says("5511999991007", "PARAR", now - 60))
    await write(client, says("5511999991007", "Voltar a receber", now))
    assert await consent(engine, "5511999991007") == (False, "keyword")
    await write(client, says("5511999991007", "voltar", now + 1))  # a menu word, not an opt-in
    assert await consent(engine, "5511999991007") == (False, "keyword")
    await write(client, says("5511999991008", "START"))  # an opt-in from someone who never opted out
    assert await consent(engine, "5511999991008") == (False, "keyword")


async def test_newest_statement_wins_across_sources(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    wa, now = "5511999991009", time.time()
    await write(client, says(wa, "STOP", now - 300))
    await post(client, preference(wa, "resume", now - 200))
    assert await consent(engine, wa) == (False, "user_preferences")
    await write(client, says(wa, "BAJA", now - 250))  # older than the resume: arrives late, changes nothing
    assert await consent(engine, wa) == (False, "user_preferences")
    assert (await client.put(ROUTE.format(pn=PN, customer=wa), headers=admin_headers)).status_code == 200
    assert await consent(engine, wa) == (True, "api")
    await post(client, preference(wa, "resume", now - 100))  # older than the API's statement
    assert await consent(engine, wa) == (True, "api")
    await write(client, says(wa, "Subscribe", time.time() + 5))
    assert await consent(engine, wa) == (False, "keyword")


async def test_configured_keywords_replace_the_defaults(settings: Settings, engine: AsyncEngine) -> None:
    configured = load_settings(
        database_url=settings.database_url,
        sandbox=True,
        opt_out_keywords="Chega, NÃO ENVIE",
        opt_in_keywords="",
    )
    assert Keywords.configured(configured) == Keywords(frozenset({"chega", "nao envie"}), frozenset())
    app = create_app(configured, in_process)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as gate:
            await post(gate, delivery([says("5511999991010", "chega!"), says("5511999991011", "STOP")]))
    assert await consent(engine, "5511999991010") == (True, "keyword")
    assert await consent(engine, "5511999991011") is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"opt_in_keywords": "START, Stop"}, "stop cannot both stop and resume"),
        ({"opt_out_keywords": "STOP, " + "x" * 41}, "WINDOW_GATE_OPT_OUT_KEYWORDS: keyword 'xxx"),
        ({"opt_in_keywords": " ! "}, "WINDOW_GATE_OPT_IN_KEYWORDS: keyword '!'"),
    ],
)
def test_bad_keyword_settings_stop_start_up(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Keywords.configured(load_settings(sandbox=True, **overrides))


def test_matching_is_on_the_whole_normalised_message() -> None:
    assert normalise("  ¡Não, PARAR!! ") == "nao, parar"
    assert normalise("Dar\tde  BAJA.") == "dar de baja"
    [message] = parse_delivery(signed(delivery([says("5511999991012", "Sair " + "x" * 200)]))[0]).inbound
    assert message.words == ()


# --- the opt-out API ---


async def test_put_records_an_opt_out_and_delete_lifts_it(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    url = ROUTE.format(pn=PN, customer="+55 11 99999-1013")
    r = await client.put(url, headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer"] == {"wa_id": "5511999991013", "user_id": None}  # created: never seen before
    assert (body["phone_number_id"], body["opted_out"], body["source"]) == (PN, True, "api")
    assert (await client.put(url, headers=admin_headers)).status_code == 200  # idempotent
    listed = (await client.get("/v1/opt-outs", headers=admin_headers)).json()
    assert [o["customer"]["wa_id"] for o in listed["opt_outs"]] == ["5511999991013"]
    assert listed["next_after"] is None

    r = await client.delete(url, headers=admin_headers)
    assert (r.status_code, r.content) == (204, b"")
    assert await consent(engine, "5511999991013") == (False, "api")
    assert (await client.get("/v1/opt-outs", headers=admin_headers)).json()["opt_outs"] == []


async def test_opt_out_api_checks_role_and_number(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    url = ROUTE.format(pn=PN, customer="5511999991014")
    other = bearer(await make_key(engine, Role.ADMIN, (OTHER_PN,)))
    reader = bearer(await make_key(engine, Role.READ, (PN,)))
    sender = bearer(await make_key(engine, Role.SEND, (PN,)))
    assert_problem(await client.put(url, headers=other), 403, "forbidden")
    assert_problem(await client.delete(url, headers=other), 403, "forbidden")
    assert_problem(
        await client.get("/v1/opt-outs", params={"phone_number_id": PN}, headers=other), 403, "forbidden"
    )
    assert_problem(await client.put(url, headers=reader), 403, "forbidden")
    assert_problem(await client.put(url), 401, "unauthorized")
    assert (await client.put(url, headers=sender)).status_code == 200
    assert len((await client.get("/v1/opt-outs", headers=reader)).json()["opt_outs"]) == 1
    # Without a phone_number_id, a key limited to numbers sees only those.
    assert (await client.get("/v1/opt-outs", headers=other)).json()["opt_outs"] == []


async def test_opt_out_api_refuses_what_cannot_be_a_customer(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = assert_problem(
        await client.put(ROUTE.format(pn=PN, customer="not-a-number"), headers=admin_headers),
        422,
        "invalid_recipient",
    )
    assert body["customer"] == "not-a-number"


async def test_opt_out_list_paginates_and_shows_every_source(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await write(client, says("5511999992001", "STOP"), says("5511999992002", "Sair"))
    await post(client, preference("5511999992003", "stop", time.time()))
    for customer in ("US.13491208655302741918", "5511999992004"):
        assert (
            await client.put(ROUTE.format(pn=PN, customer=customer), headers=admin_headers)
        ).status_code == 200
    assert (
        await client.put(ROUTE.format(pn=OTHER_PN, customer="5511999992005"), headers=admin_headers)
    ).is_success
    await write(client, says("5511999992006", "hello"))  # known, never opted out: not listed

    seen: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"phone_number_id": PN, "limit": 2} | ({"after": after} if after else {})
        page = (await client.get("/v1/opt-outs", params=params, headers=admin_headers)).json()
        assert len(page["opt_outs"]) <= 2
        seen += page["opt_outs"]
        if (after := page["next_after"]) is None:
            break
    assert {o["customer"]["wa_id"] or o["customer"]["user_id"] for o in seen} == {
        "5511999992001",
        "5511999992002",
        "5511999992003",
        "5511999992004",
        "US.13491208655302741918",
    }
    assert sorted(o["source"] for o in seen) == ["api", "api", "keyword", "keyword", "user_preferences"]
    everything = (await client.get("/v1/opt-outs", headers=admin_headers)).json()["opt_outs"]
    assert len(everything) == 6
    assert_problem(
        await client.get("/v1/opt-outs", params={"after": "garbage"}, headers=admin_headers),
        422,
        "validation_error",
    )
    assert_problem(
        await client.get("/v1/opt-outs", params={"limit": 0}, headers=admin_headers), 422, "validation_error"
    )


# --- the send path's check ---


async def test_check_marketing_finds_the_opt_out_through_a_national_spelling(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    now = time.time()
    await write(client, says("551187654321", "PARAR", now - 60))  # Meta's wa_id: no ninth digit
    aliases = parse_customer("+55 11 98765-4321").aliases()
    async with engine.connect() as conn:
        with pytest.raises(OptedOut) as refused:
            await check_marketing(conn, PN, aliases)
        await check_marketing(conn, OTHER_PN, aliases)  # an opt-out is per business number
        await check_marketing(conn, PN, parse_customer("5511900000000").aliases())  # never seen
    problem = refused.value.problem()
    assert (problem["status"], problem["code"], problem["phone_number_id"]) == (409, "opted_out", PN)
    assert problem["customer"] == {"wa_id": "551187654321", "user_id": None}
    assert problem["consent"] == {
        "category": "marketing",
        "opted_out": True,
        "source": "keyword",
        "changed_at": datetime.fromtimestamp(int(now - 60), UTC).isoformat().replace("+00:00", "Z"),
    }

    await write(client, says("551187654321", "start", now))
    async with engine.connect() as conn:
        await check_marketing(conn, PN, aliases)


async def test_check_marketing_refuses_after_an_api_opt_out_of_an_unknown_customer(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    url = ROUTE.format(pn=PN, customer="+52 1 55 1234 5678")
    assert (await client.put(url, headers=admin_headers)).status_code == 200
    async with engine.connect() as conn:
        with pytest.raises(OptedOut):
            await check_marketing(conn, PN, parse_customer("525512345678").aliases())  # MX without the 1
    assert (await client.delete(url, headers=admin_headers)).status_code == 204
    async with engine.connect() as conn:
        await check_marketing(conn, PN, parse_customer("525512345678").aliases())
