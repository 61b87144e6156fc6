"""The template registry on real PostgreSQL: sync from the simulator (cursor paging, vanished → DELETED),
template webhooks, listing, the send-time check with its exact refusals, Meta's answers, sends by name."""

import asyncio
import dataclasses
import json
import os
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem, empty, make_key
from tests.factories import PN, WABA, change, delivery, inbound, signed
from tests.upstream import Gated, Meta, count
from window_gate import cli
from window_gate.apikey.rules import Role
from window_gate.config import SANDBOX_WABA_ID, SettingsError, load_settings
from window_gate.errors import TYPE_BASE, GateError
from window_gate.sandbox import SimulatorConfig, create_simulator, simulator_state
from window_gate.sandbox.templates import BUILT_IN, Template
from window_gate.template import repository, service
from window_gate.template.service import HINT, TemplateInfo

PN2, WABA2 = "106540352240000", "102290129349999"
CUSTOMER = "+55 11 98765-4321"
EXTRA = (
    Template(
        "2000000000000001",
        "welcome_named",
        "en",
        "UTILITY",
        "APPROVED",
        (
            {"type": "HEADER", "format": "TEXT", "text": "Hello {{first_name}}"},
            {"type": "BODY", "text": "Hi {{first_name}}, your code is {{code}}."},
        ),
        parameter_format="NAMED",
    ),
    Template(
        "2000000000000002",
        "receipt",
        "en",
        "UTILITY",
        "APPROVED",
        (
            {"type": "HEADER", "format": "DOCUMENT"},
            {"type": "BODY", "text": "Your receipt for order {{1}}."},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "URL", "text": "Track", "url": "https://shop.example/track/{{1}}"},
                    {"type": "QUICK_REPLY", "text": "Stop"},
                ],
            },
        ),
    ),
    Template(
        "2000000000000003",
        "order_update",
        "pt_BR",
        "UTILITY",
        "REJECTED",
        ({"type": "BODY", "text": "Oi {{1}}, seu pedido {{2}} foi enviado."},),
    ),
)
TEMPLATES = (*BUILT_IN, *EXTRA)
ORDER_UPDATE = "1000000000000002"


class Upstream(httpx.AsyncBaseTransport):
    """Meta as the gate sees it here: template listings from the simulator, sends to the scripted Meta
    (which keeps the exact bodies that left)."""

    def __init__(self, simulator: FastAPI, meta: Meta) -> None:
        self.listing = httpx.ASGITransport(app=simulator)
        self.sending: httpx.AsyncBaseTransport = httpx.MockTransport(meta)
        self.listed: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.listed.append(request.url)
            return await self.listing.handle_async_request(request)
        return await self.sending.handle_async_request(request)


@pytest.fixture
def simulator() -> FastAPI:
    return create_simulator(SimulatorConfig(templates=TEMPLATES))


@pytest.fixture
def upstream(simulator: FastAPI, meta: Meta) -> Upstream:
    return Upstream(simulator, meta)


def offer(simulator: FastAPI, templates: tuple[Template, ...]) -> None:
    """What the simulated Meta lists from now on."""
    state = simulator_state(simulator)
    state.config = dataclasses.replace(state.config, templates=templates)


async def sync(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/templates/sync", json=body or None)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def post_webhook(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    body, headers = signed(payload)
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200


def template_change(field: str, **value: Any) -> dict[str, Any]:
    """A template webhook as Meta sends it: entry.id the account, no phone number metadata."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "time": 1764000000, "changes": [{"field": field, "value": value}]}],
    }


async def row(engine: AsyncEngine, template_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        found = (
            await conn.execute(text("SELECT * FROM templates WHERE id = :id"), {"id": template_id})
        ).first()
    assert found is not None, template_id
    return dict(found._mapping)


async def check(engine: AsyncEngine, template: dict[str, Any], pn: str = PN) -> TemplateInfo:
    async with engine.connect() as conn:
        return await service.check_send(conn, pn, template)


async def refusal(engine: AsyncEngine, template: dict[str, Any], pn: str = PN) -> dict[str, Any]:
    with pytest.raises(GateError) as caught:
        await check(engine, template, pn)
    return caught.value.problem()


def tpl(name: str, language: str = "en", *components: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "language": {"code": language}}
    return out | ({"components": list(components)} if components else {})


def body_of(*values: str) -> dict[str, Any]:
    return {"type": "body", "parameters": [{"type": "text", "text": v} for v in values]}


def many(n: int) -> tuple[Template, ...]:
    return tuple(
        Template(
            f"3{i:015d}", f"bulk_{i:04d}", "en", "MARKETING", "APPROVED", ({"type": "BODY", "text": "Hi"},)
        )
        for i in range(n)
    )


# --- sync -------------------------------------------------------------------------------------------------
async def test_sync_pulls_every_template_across_pages(
    gate: Gated, upstream: Upstream, simulator: FastAPI
) -> None:
    client, engine = gate
    offer(simulator, (*TEMPLATES, *many(250)))
    answer = await sync(client)
    assert answer == {"accounts": [{"waba_id": WABA, "templates": 258, "deleted": 0, "error": None}]}
    assert await count(engine, "templates") == 258
    assert len(upstream.listed) == 3  # 100 a page
    assert [u.params.get("after") is None for u in upstream.listed] == [True, False, False]
    assert "components" in upstream.listed[0].params["fields"]
    stored = await row(engine, ORDER_UPDATE)
    assert stored | {"synced_at": None, "created_at": None, "updated_at": None} == {
        "id": ORDER_UPDATE,
        "waba_id": WABA,
        "name": "order_update",
        "language": "en",
        "status": "APPROVED",
        "category": "UTILITY",
        "previous_category": None,
        "parameter_format": "POSITIONAL",
        "components": [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped."}],
        "components_stale_since": None,
        "quality": None,
        "reason": None,
        "meta_error_code": None,
        "meta_error_at": None,
        "synced_at": None,
        "created_at": None,
        "updated_at": None,
    }
    assert stored["synced_at"] is not None
    async with engine.connect() as conn:
        synced = (await conn.execute(text("SELECT waba_id, templates FROM template_syncs"))).all()
    assert [tuple(r) for r in synced] == [(WABA, 258)]


async def test_vanished_templates_are_marked_deleted_and_changes_replace(
    gate: Gated, simulator: FastAPI
) -> None:
    client, engine = gate
    await sync(client)
    paused = dataclasses.replace(TEMPLATES[1], status="PAUSED", category="MARKETING")
    offer(simulator, (TEMPLATES[0], paused, *TEMPLATES[3:]))  # spring_sale is gone
    answer = await sync(client)
    assert answer["accounts"] == [{"waba_id": WABA, "templates": 7, "deleted": 1, "error": None}]
    gone = await row(engine, "1000000000000003")
    assert (gone["status"], gone["reason"]) == ("DELETED", "no longer listed by Meta")
    changed = await row(engine, ORDER_UPDATE)
    assert (changed["status"], changed["category"]) == ("PAUSED", "MARKETING")
    assert (await sync(client))["accounts"][0]["deleted"] == 0  # already DELETED: not counted again
    problem = await refusal(engine, tpl("spring_sale", "en", body_of("Ana")))
    assert problem["code"] == "template_not_found"
    assert problem["detail"] == "template 'spring_sale' does not exist in language 'en' (deleted)"
    offer(simulator, TEMPLATES)  # listed again (reinstated): a live template once more
    await sync(client)
    assert (await row(engine, "1000000000000003"))["status"] == "APPROVED"


async def test_sync_of_an_unknown_account_is_502_and_changes_nothing(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    r = await client.post("/v1/templates/sync", json={"waba_ids": ["999", WABA]})
    problem = assert_problem(r, 502, "upstream_error")
    assert str(problem["detail"]).startswith("1 of 2 accounts could not be synced: Meta answered (100)")
    accounts = problem["accounts"]
    assert isinstance(accounts, list)
    assert [(a["waba_id"], a["templates"], bool(a["error"])) for a in accounts] == [
        ("999", 0, True),
        (WABA, 8, False),
    ]
    assert await count(engine, "templates") == 8
    async with engine.connect() as conn:
        assert await repository.known_accounts(conn) == [WABA]


async def test_sync_needs_an_admin_key(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    for role in (Role.READ, Role.SEND):
        headers = {"Authorization": f"Bearer {await make_key(engine, role)}"}
        assert_problem(await client.post("/v1/templates/sync", headers=headers), 403, "forbidden")
    assert_problem(await client.post("/v1/templates/sync"), 401, "unauthorized")


async def test_sync_covers_configured_and_learnt_accounts(gate: Gated, upstream: Upstream) -> None:
    client, _ = gate
    other = delivery([inbound()], phone_number_id=PN2)
    other["entry"][0]["id"] = WABA2
    await post_webhook(client, other)
    r = await client.post("/v1/templates/sync")
    problem = assert_problem(r, 502, "upstream_error")  # the simulator only knows its own account
    accounts = problem["accounts"]
    assert isinstance(accounts, list)
    assert [a["waba_id"] for a in accounts] == [SANDBOX_WABA_ID, WABA2]
    assert {u.path for u in upstream.listed} == {
        f"/v25.0/{WABA}/message_templates",
        f"/v25.0/{WABA2}/message_templates",
    }


def test_sandbox_account_is_the_simulators() -> None:
    assert SANDBOX_WABA_ID == SimulatorConfig().waba_id == WABA


def test_waba_ids_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("WINDOW_GATE_")]:
        monkeypatch.delenv(name)
    assert load_settings(sandbox=True).template_accounts == [SANDBOX_WABA_ID]
    assert load_settings(sandbox=True, waba_ids=" 111, 222 ,").template_accounts == ["111", "222"]
    meta = load_settings(graph_access_token="t", app_secret="s", verify_token="v")
    assert meta.template_accounts == []
    with pytest.raises(SettingsError) as caught:
        load_settings(sandbox=True, waba_ids="111,abc")
    assert str(caught.value) == "WINDOW_GATE_WABA_IDS: not a WhatsApp Business Account id (digits): 'abc'"


def test_cli_templates_sync(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [k for k in os.environ if k.startswith("WINDOW_GATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WINDOW_GATE_DATABASE_URL", database_url)
    monkeypatch.setenv("WINDOW_GATE_SANDBOX", "true")
    try:
        with pytest.raises(SystemExit) as done:
            cli.main(["templates", "sync"])
        assert done.value.code == 0
        assert capsys.readouterr().out == f"{WABA}: 5 templates, 0 no longer listed (marked DELETED)\n"
        with pytest.raises(SystemExit) as failed:
            cli.main(["templates", "sync", "--waba", "999"])
        assert failed.value.code == 1
        assert capsys.readouterr().out.startswith("999: not synced: Meta answered (100)")
    finally:
        asyncio.run(empty(database_url, "templates", "template_syncs"))


# --- webhooks ---------------------------------------------------------------------------------------------
async def test_messages_webhooks_teach_which_account_a_number_belongs_to(gate: Gated) -> None:
    client, engine = gate
    for _ in range(3):  # the first writes, the second confirms, the third costs nothing
        await post_webhook(client, delivery([inbound()]))
    moved = delivery([inbound()])
    moved["entry"][0]["id"] = WABA2
    await post_webhook(client, moved)
    async with engine.connect() as conn:
        pairs = (await conn.execute(text("SELECT phone_number_id, waba_id FROM phone_numbers"))).all()
        assert [tuple(p) for p in pairs] == [(PN, WABA2)]
        assert await repository.waba_of(conn, PN) == WABA2
        assert await repository.waba_of(conn, "unknown-number") == WABA2  # the only account known


async def test_status_webhook_pauses_and_reapproves(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    await post_webhook(
        client,
        template_change(
            "message_template_status_update",
            event="PAUSED",
            message_template_id=int(ORDER_UPDATE),
            message_template_name="order_update",
            message_template_language="en",
            reason=None,
            other_info={"title": "FIRST_PAUSE", "description": "Paused for low quality: 3 hours"},
        ),
    )
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["status"], stored["reason"]) == ("PAUSED", "Paused for low quality: 3 hours")
    problem = await refusal(engine, tpl("order_update", "en", body_of("Ana", "#1")))
    assert problem == {
        "type": TYPE_BASE + "template_not_approved",
        "title": "Template is not approved",
        "status": 422,
        "detail": "template 'order_update' (en) is PAUSED: Paused for low quality: 3 hours; only APPROVED "
        "templates can be sent",
        "code": "template_not_approved",
        "template": {"name": "order_update", "language": "en"},
        "waba_id": WABA,
        "template_id": ORDER_UPDATE,
        "template_status": "PAUSED",
        "reason": "Paused for low quality: 3 hours",
    }
    await post_webhook(
        client,
        template_change(
            "message_template_status_update",
            event="APPROVED",
            message_template_id=int(ORDER_UPDATE),
            message_template_name="order_update",
            message_template_language="en",
            reason="NONE",
        ),
    )
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["status"], stored["reason"]) == ("APPROVED", None)
    assert (await check(engine, tpl("order_update", "en", body_of("Ana", "#1")))).checked


async def test_status_webhook_for_a_new_template_adds_it_without_components(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    await post_webhook(
        client,
        template_change(
            "message_template_status_update",
            event="APPROVED",
            message_template_id=4000000000000001,
            message_template_name="brand_new",
            message_template_language="es",
            reason="NONE",
            message_template_category="marketing",
        ),
    )
    stored = await row(engine, "4000000000000001")
    assert (stored["waba_id"], stored["status"], stored["category"], stored["components"]) == (
        WABA,
        "APPROVED",
        "MARKETING",
        None,
    )
    # Known and approved: it passes, with its category, and its parameters are Meta's to judge until a sync.
    info = await check(engine, tpl("brand_new", "es", body_of("anything")))
    assert (info.category, info.checked, info.template_id) == ("MARKETING", True, "4000000000000001")


async def test_quality_and_category_webhooks_update_the_template(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    ids = {
        "message_template_id": int(ORDER_UPDATE),
        "message_template_name": "order_update",
        "message_template_language": "en",
    }
    await post_webhook(
        client,
        template_change(
            "message_template_quality_update", previous_quality_score="GREEN", new_quality_score="RED", **ids
        ),
    )
    # An impending change: new_category is still the current one.
    await post_webhook(
        client,
        template_change(
            "template_category_update",
            correct_category="MARKETING",
            new_category="UTILITY",
            category_update_timestamp=1764000000,
            **ids,
        ),
    )
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["quality"], stored["category"], stored["previous_category"]) == ("RED", "UTILITY", None)
    await post_webhook(
        client,
        template_change(
            "template_category_update", previous_category="UTILITY", new_category="MARKETING", **ids
        ),
    )
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["category"], stored["previous_category"]) == ("MARKETING", "UTILITY")
    info = await check(engine, tpl("order_update", "en", body_of("Ana", "#1")))
    assert info.category == "MARKETING"  # what pricing and the opt-out check see
    # A quality update for a template never seen adds nothing.
    await post_webhook(
        client,
        template_change("message_template_quality_update", new_quality_score="RED", message_template_id=42),
    )
    assert await count(engine, "templates") == 8


async def test_unreadable_template_webhooks_are_acknowledged_and_ignored(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    for value in ({"event": "PAUSED"}, {"message_template_id": 1}, {"new_category": "MARKETING"}):
        await post_webhook(client, template_change("message_template_status_update", **value))
        await post_webhook(client, template_change("template_category_update", **value))
    await post_webhook(client, change("message_template_status_update", {"event": "APPROVED"}))
    async with engine.connect() as conn:
        statuses = (await conn.execute(text("SELECT DISTINCT status FROM templates ORDER BY 1"))).scalars()
        assert list(statuses) == ["APPROVED", "DISABLED", "PAUSED", "REJECTED"]


# --- listing ------------------------------------------------------------------------------------------------
async def test_list_filters(gate: Gated) -> None:
    client, _ = gate
    await sync(client)

    async def names(**query: str) -> list[tuple[str, str]]:
        r = await client.get("/v1/templates", params=query)
        assert r.status_code == 200, r.text
        return [(t["name"], t["language"]) for t in r.json()["templates"]]

    assert len(await names()) == 8
    assert await names(name="order_update") == [("order_update", "en"), ("order_update", "pt_BR")]
    assert await names(name="order_update", language="pt_BR") == [("order_update", "pt_BR")]
    assert await names(status="paused") == [("old_promo", "en")]
    assert await names(category="marketing") == [("old_promo", "en"), ("spring_sale", "en")]
    assert await names(category="MARKETING", status="APPROVED") == [("spring_sale", "en")]
    assert await names(waba_id=WABA) == await names()
    assert await names(waba_id="999") == []
    assert await names(phone_number_id=PN) == await names()  # the only account known
    one = (await client.get("/v1/templates", params={"name": "receipt"})).json()["templates"][0]
    assert one["components"][0] == {"type": "HEADER", "format": "DOCUMENT"}
    assert one["last_meta_error"] is None and one["synced_at"] and one["id"] == "2000000000000002"


async def test_list_pages_with_a_cursor(gate: Gated, simulator: FastAPI) -> None:
    client, _ = gate
    offer(simulator, (*TEMPLATES, *many(30)))
    await sync(client)
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        r = await client.get("/v1/templates", params={"limit": 7} | ({"after": after} if after else {}))
        page = r.json()
        seen += [t["id"] for t in page["templates"]]
        after = page["next_after"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 38
    assert_problem(await client.get("/v1/templates", params={"after": "garbage"}), 422, "validation_error")


async def test_list_for_a_key_limited_to_numbers(gate: Gated, engine: AsyncEngine) -> None:
    client, _ = gate
    await sync(client)
    await post_webhook(client, delivery([inbound()]))  # PN belongs to WABA
    other = delivery([inbound()], phone_number_id=PN2)
    other["entry"][0]["id"] = WABA2
    await post_webhook(client, other)
    headers = {"Authorization": f"Bearer {await make_key(engine, Role.READ, (PN2,))}"}
    r = await client.get("/v1/templates", headers=headers)
    assert r.status_code == 200 and r.json()["templates"] == []  # PN2's account has none
    assert_problem(
        await client.get("/v1/templates", params={"waba_id": WABA}, headers=headers), 403, "forbidden"
    )
    assert_problem(
        await client.get("/v1/templates", params={"phone_number_id": PN}, headers=headers), 403, "forbidden"
    )
    mine = {"Authorization": f"Bearer {await make_key(engine, Role.READ, (PN,))}"}
    assert len((await client.get("/v1/templates", headers=mine)).json()["templates"]) == 8


# --- the send-time check ------------------------------------------------------------------------------------
async def test_check_passes_approved_template_with_its_category(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    info = await check(engine, tpl("spring_sale", "en", body_of("Ana")))
    assert info == TemplateInfo(
        name="spring_sale",
        language="en",
        category="MARKETING",
        waba_id=WABA,
        template_id="1000000000000003",
        status="APPROVED",
        checked=True,
    )


async def test_check_refuses_a_template_missing_in_that_language(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    assert await refusal(engine, tpl("order_update", "es", body_of("Ana", "#1"))) == {
        "type": TYPE_BASE + "template_not_found",
        "title": "Template does not exist in that language",
        "status": 422,
        "detail": "template 'order_update' does not exist in language 'es'; it exists in en, pt_BR",
        "code": "template_not_found",
        "template": {"name": "order_update", "language": "es"},
        "waba_id": WABA,
        "languages": ["en", "pt_BR"],
        "hint": HINT,
    }
    problem = await refusal(engine, tpl("no_such_template"))
    assert problem["detail"] == "template 'no_such_template' does not exist in language 'en'"
    assert problem["languages"] == []


async def test_check_refuses_a_template_not_approved_with_status_and_reason(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE templates SET reason = 'INCORRECT_CATEGORY' WHERE id = '2000000000000003'")
        )
    assert await refusal(engine, tpl("order_update", "pt_BR", body_of("Ana", "#1"))) == {
        "type": TYPE_BASE + "template_not_approved",
        "title": "Template is not approved",
        "status": 422,
        "detail": "template 'order_update' (pt_BR) is REJECTED: INCORRECT_CATEGORY; only APPROVED templates "
        "can be sent",
        "code": "template_not_approved",
        "template": {"name": "order_update", "language": "pt_BR"},
        "waba_id": WABA,
        "template_id": "2000000000000003",
        "template_status": "REJECTED",
        "reason": "INCORRECT_CATEGORY",
    }
    paused = await refusal(engine, tpl("old_promo"))
    assert (paused["code"], paused["template_status"], paused["reason"]) == (
        "template_not_approved",
        "PAUSED",
        None,
    )


async def test_check_refuses_parameters_naming_component_and_parameter(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    assert await refusal(engine, tpl("order_update", "en", body_of("Ana"))) == {
        "type": TYPE_BASE + "template_parameters_invalid",
        "title": "Template parameters do not match the template",
        "status": 422,
        "detail": "template 'order_update' (en): body: the template expects 2 parameters ({{1}}, {{2}}); "
        "1 given: {{2}} is missing",
        "code": "template_parameters_invalid",
        "template": {"name": "order_update", "language": "en"},
        "waba_id": WABA,
        "template_id": ORDER_UPDATE,
        "parameter_format": "POSITIONAL",
        "component": "body",
        "parameter": "{{2}}",
        "problems": [
            {
                "component": "body",
                "parameter": "{{2}}",
                "detail": "body: the template expects 2 parameters ({{1}}, {{2}}); 1 given: {{2}} is missing",
            }
        ],
    }
    button = {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": []}
    header = {
        "type": "header",
        "parameters": [{"type": "image", "image": {"link": "https://x.example/a.png"}}],
    }
    problem = await refusal(engine, tpl("receipt", "en", header, body_of("#1"), button))
    assert (problem["component"], problem["parameter"]) == ("header", "document")
    assert problem["detail"] == (
        "template 'receipt' (en): header: the template's header is DOCUMENT: a 'image' parameter was given "
        "(and 1 more)"
    )
    assert problem["problems"] == [
        {
            "component": "header",
            "parameter": "document",
            "detail": "header: the template's header is DOCUMENT: a 'image' parameter was given",
        },
        {
            "component": "button",
            "parameter": "sub_type",
            "index": 0,
            "detail": "button 0 is URL: sub_type must be 'url', not 'quick_reply'",
        },
    ]
    named = await refusal(engine, tpl("welcome_named", "en", body_of("Ana", "123")))
    assert (named["component"], named["parameter"], named["parameter_format"]) == (
        "header",
        "{{first_name}}",
        "NAMED",
    )


async def test_check_without_a_synced_registry_passes_unchecked(gate: Gated, engine: AsyncEngine) -> None:
    client, _ = gate
    info = await check(engine, tpl("anything", "xx"))  # no account known at all
    assert info == TemplateInfo("anything", "xx", None, None, None, None, checked=False)
    await post_webhook(client, delivery([inbound()]))  # PN's account known, never synced
    info = await check(engine, tpl("anything", "xx"))
    assert (info.waba_id, info.category, info.checked) == (WABA, None, False)
    # A template learnt from a webhook is known even so: its status counts.
    await post_webhook(
        client,
        template_change(
            "message_template_status_update",
            event="DISABLED",
            message_template_id=5,
            message_template_name="gone_bad",
            message_template_language="en",
        ),
    )
    assert (await refusal(engine, tpl("gone_bad")))["template_status"] == "DISABLED"
    assert not (await check(engine, tpl("anything", "xx"))).checked


async def test_check_with_two_accounts_uses_the_numbers_own(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    other = delivery([inbound()], phone_number_id=PN2)
    other["entry"][0]["id"] = WABA2
    await post_webhook(client, other)
    # PN's account is not learnt and two are known: nothing to check against.
    assert not (await check(engine, tpl("no_such_template"))).checked
    # PN2 belongs to WABA2, which was never synced.
    assert (await check(engine, tpl("no_such_template"), PN2)).waba_id == WABA2
    await post_webhook(client, delivery([inbound()]))
    assert (await refusal(engine, tpl("no_such_template")))["code"] == "template_not_found"


async def test_check_needs_name_and_language(engine: AsyncEngine) -> None:
    for template in (
        {},
        {"name": "x"},
        {"name": "x", "language": "en"},
        {"name": "", "language": {"code": "en"}},
    ):
        problem = await refusal(engine, template)
        assert problem["code"] == "validation_error"
        assert problem["detail"] == "a template needs `name` and `language.code`"


# --- Meta's answers ----------------------------------------------------------------------------------------
async def learn(engine: AsyncEngine, template: dict[str, Any], code: int, pn: str = PN) -> None:
    async with engine.begin() as conn:
        await service.learn_from_meta_error(conn, pn, template, code)


@pytest.mark.parametrize(("code", "status"), [(132015, "PAUSED"), (132016, "DISABLED")])
async def test_meta_paused_or_disabled_answer_sets_the_status(gate: Gated, code: int, status: str) -> None:
    client, engine = gate
    await sync(client)
    await learn(engine, tpl("order_update", "en", body_of("Ana", "#1")), code)
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["status"], stored["reason"], stored["meta_error_code"]) == (
        status,
        f"Meta answered {code} to a send",
        code,
    )
    problem = await refusal(engine, tpl("order_update", "en", body_of("Ana", "#1")))
    assert (problem["code"], problem["template_status"], problem["reason"]) == (
        "template_not_approved",
        status,
        f"Meta answered {code} to a send",
    )
    assert (await row(engine, "2000000000000003"))["status"] == "REJECTED"  # other languages untouched
    await sync(client)  # Meta's listing wins again
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["status"], stored["meta_error_code"]) == ("APPROVED", None)


async def test_meta_not_found_answer_refuses_later_sends_until_refreshed(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    template = tpl("order_update", "en", body_of("Ana", "#1"))
    await learn(engine, template, 132001)
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["status"], stored["meta_error_code"]) == ("APPROVED", 132001)
    problem = await refusal(engine, template)
    at = stored["meta_error_at"].isoformat()
    assert problem == {
        "type": TYPE_BASE + "template_not_found",
        "title": "Template does not exist in that language",
        "status": 422,
        "detail": f"Meta answered 132001 for template 'order_update' in 'en' at {at}: it does not exist in "
        "that language or is not approved",
        "code": "template_not_found",
        "template": {"name": "order_update", "language": "en"},
        "waba_id": WABA,
        "languages": ["en", "pt_BR"],
        "meta_error": {"code": 132001, "at": at},
        "hint": HINT,
    }
    listed = (await client.get("/v1/templates", params={"name": "order_update", "language": "en"})).json()
    assert listed["templates"][0]["last_meta_error"]["code"] == 132001
    await sync(client)
    assert (await check(engine, template)).checked


@pytest.mark.parametrize("code", [132000, 132012])
async def test_meta_parameter_answers_are_recorded_for_ops(gate: Gated, code: int) -> None:
    client, engine = gate
    await sync(client)
    template = tpl("order_update", "en", body_of("Ana", "#1"))
    await learn(engine, template, code)
    stored = await row(engine, ORDER_UPDATE)
    assert (stored["status"], stored["meta_error_code"]) == ("APPROVED", code)
    assert (await check(engine, template)).checked  # the gate's own check still passes: Meta judges


async def test_other_meta_answers_and_unknown_templates_change_nothing(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    await learn(engine, tpl("order_update"), 131047)
    await learn(engine, tpl("no_such_template"), 132015)
    await learn(engine, {"name": "order_update"}, 132015)
    await learn(engine, tpl("order_update"), 132015, pn="unknown-with-two-accounts")  # still the one account
    assert (await row(engine, ORDER_UPDATE))["status"] == "PAUSED"
    async with engine.connect() as conn:
        errors = await conn.execute(text("SELECT count(*) FROM templates WHERE meta_error_code IS NOT NULL"))
        assert errors.scalar() == 1


# --- sending by name ---------------------------------------------------------------------------------------
async def test_send_by_name_builds_the_components_and_answers_like_messages(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await sync(client)
    r = await client.post(
        "/v1/templates/order_update/send",
        json={"phone_number_id": PN, "to": CUSTOMER, "language": "en", "parameters": ["Ana", "#1234"]},
        headers={"Idempotency-Key": "by-name-1"},
    )
    assert r.status_code == 201, r.text
    sent = r.json()
    assert set(sent) == {"id", "graph_message_id", "status", "recipient", "window", "pricing_estimate"}
    assert sent["status"] == "accepted" and sent["recipient"]["input"] == CUSTOMER
    [request] = meta.requests
    assert request == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CUSTOMER,
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en"},
            "components": [body_of("Ana", "#1234")],
        },
        "biz_opaque_callback_data": f"wg:{sent['id']}",
    }
    again = await client.post(
        "/v1/templates/order_update/send",
        json={"phone_number_id": PN, "to": CUSTOMER, "language": "en", "parameters": ["Ana", "#1234"]},
        headers={"Idempotency-Key": "by-name-1"},
    )
    assert again.json()["id"] == sent["id"] and len(meta.requests) == 1
    assert await count(engine, "messages") == 1


async def test_send_by_name_named_media_and_buttons(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    await sync(client)
    named = await client.post(
        "/v1/templates/welcome_named/send",
        json={
            "phone_number_id": PN,
            "to": CUSTOMER,
            "language": "en",
            "parameters": {"first_name": "Ana", "code": "123"},
        },
    )
    assert named.status_code == 201, named.text

    def accept_bsuid(request: httpx.Request) -> httpx.Response:
        recipient = json.loads(request.content)["recipient"]
        answer = {"contacts": [{"input": recipient, "user_id": recipient}], "messages": [{"id": "wamid.B1"}]}
        return httpx.Response(200, json={"messaging_product": "whatsapp"} | answer)

    meta.reply = accept_bsuid
    receipt = await client.post(
        "/v1/templates/receipt/send",
        json={
            "phone_number_id": PN,
            "to": "US.13491208655302741918",
            "language": "en",
            "parameters": ["#1234"],
            "header": {"link": "https://shop.example/r.pdf"},
            "buttons": {"0": "1234"},
        },
    )
    assert receipt.status_code == 201, receipt.text
    first, second = meta.requests
    assert first["template"]["components"] == [
        {"type": "header", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}]},
        {
            "type": "body",
            "parameters": [
                {"type": "text", "parameter_name": "first_name", "text": "Ana"},
                {"type": "text", "parameter_name": "code", "text": "123"},
            ],
        },
    ]
    assert second["recipient"] == "US.13491208655302741918" and "to" not in second
    assert second["template"]["components"] == [
        {
            "type": "header",
            "parameters": [{"type": "document", "document": {"link": "https://shop.example/r.pdf"}}],
        },
        body_of("#1234"),
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "1234"}]},
    ]


async def test_send_by_name_refusals_send_and_record_nothing(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await sync(client)

    async def send(name: str, **body: Any) -> httpx.Response:
        return await client.post(
            f"/v1/templates/{name}/send",
            json={"phone_number_id": PN, "to": CUSTOMER, "language": "en"} | body,
        )

    problem = assert_problem(
        await send("order_update", parameters=["Ana"]), 422, "template_parameters_invalid"
    )
    assert (problem["component"], problem["parameter"]) == ("body", "{{2}}")
    problem = assert_problem(
        await send("order_update", parameters={"1": "Ana"}), 422, "template_parameters_invalid"
    )
    assert (
        problem["detail"]
        == "template 'order_update' (en): the template is POSITIONAL: send `parameters` as a list of values in "
        "order"
    )
    problem = assert_problem(await send("receipt", parameters=["#1"]), 422, "template_parameters_invalid")
    assert (problem["component"], problem["parameter"]) == ("header", "document")
    problem = assert_problem(
        await send("receipt", parameters=["#1"], buttons={"5": "x"}), 422, "template_parameters_invalid"
    )
    assert (problem["component"], problem["parameter"], problem["index"]) == ("button", "index", 5)
    assert_problem(await send("no_such_template"), 422, "template_not_found")
    assert_problem(await send("no_such_template", parameters={"a": "b"}), 422, "template_not_found")
    problem = assert_problem(await send("old_promo"), 422, "template_not_approved")
    assert problem["template_status"] == "PAUSED"
    assert_problem(
        await send("order_update", to="not a number", parameters=["a", "b"]), 422, "invalid_recipient"
    )
    assert meta.requests == [] and await count(engine, "messages") == 0


async def test_send_by_name_needs_a_send_key_for_that_number(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = {"phone_number_id": PN, "to": CUSTOMER, "language": "en", "parameters": ["a", "b"]}
    read = {"Authorization": f"Bearer {await make_key(engine, Role.READ)}"}
    assert_problem(
        await client.post("/v1/templates/order_update/send", json=body, headers=read), 403, "forbidden"
    )
    other = {"Authorization": f"Bearer {await make_key(engine, Role.SEND, (PN2,))}"}
    assert_problem(
        await client.post("/v1/templates/order_update/send", json=body, headers=other), 403, "forbidden"
    )


async def test_send_by_name_without_a_synced_registry(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    r = await client.post(
        "/v1/templates/anything/send",
        json={"phone_number_id": PN, "to": CUSTOMER, "language": "en", "parameters": ["Ana"]},
    )
    assert r.status_code == 201, r.text
    assert meta.requests[0]["template"] == {
        "name": "anything",
        "language": {"code": "en"},
        "components": [body_of("Ana")],
    }


async def test_sandbox_loop_sync_then_send_by_name(
    gate: Gated, upstream: Upstream, simulator: FastAPI
) -> None:
    """Sends judged by the simulator itself (Meta's template checks), after a sync from it."""
    client, _ = gate
    upstream.sending = upstream.listing
    await sync(client)
    for name, parameters in (
        ("order_update", ["Ana", "#1234"]),
        ("spring_sale", ["Ana"]),
        ("hello_world", []),
    ):
        language = "en_US" if name == "hello_world" else "en"
        r = await client.post(
            f"/v1/templates/{name}/send",
            json={"phone_number_id": PN, "to": CUSTOMER, "language": language, "parameters": parameters},
        )
        assert r.status_code == 201, r.text
        assert r.json()["graph_message_id"].startswith("wamid.SANDBOX")
    stats = simulator_state(simulator).stats()
    assert (stats["accepted"], stats["errors"]) == (3, {})


# --- round two of Meta's template webhooks --------------------------------------------------------------
async def test_reinstated_template_is_sendable_again(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    ids = {
        "message_template_id": int(ORDER_UPDATE),
        "message_template_name": "order_update",
        "message_template_language": "en",
    }
    await post_webhook(client, template_change("message_template_status_update", event="DISABLED", **ids))
    assert (await refusal(engine, tpl("order_update", "en", body_of("Ana", "#1"))))["template_status"] == (
        "DISABLED"
    )
    await post_webhook(
        client, template_change("message_template_status_update", event="REINSTATED", reason="NONE", **ids)
    )
    assert (await row(engine, ORDER_UPDATE))["status"] == "APPROVED"
    assert (await check(engine, tpl("order_update", "en", body_of("Ana", "#1")))).checked


async def test_components_update_stops_parameter_checks_until_the_next_sync(gate: Gated) -> None:
    client, engine = gate
    await sync(client)
    one_parameter = tpl("order_update", "en", body_of("Ana"))  # the registry's body has two
    assert (await refusal(engine, one_parameter))["code"] == "template_parameters_invalid"
    await post_webhook(
        client,
        template_change(
            "message_template_components_update",
            message_template_id=int(ORDER_UPDATE),
            message_template_name="order_update",
            message_template_language="en",
            message_template_element="Hi {{1}}, your order has shipped.",
        ),
    )
    stored = await row(engine, ORDER_UPDATE)
    assert stored["components_stale_since"] is not None and stored["components"] is not None
    info = await check(engine, one_parameter)  # Meta judges until the new components are synced
    assert (info.checked, info.status, info.category) == (True, "APPROVED", "UTILITY")
    listed = (await client.get("/v1/templates", params={"name": "order_update", "language": "en"})).json()
    assert listed["templates"][0]["components_stale_since"] is not None
    await sync(client)  # the simulator still lists two parameters: checked against them again
    assert (await row(engine, ORDER_UPDATE))["components_stale_since"] is None
    assert (await refusal(engine, one_parameter))["code"] == "template_parameters_invalid"


async def test_text_parameter_meta_would_refuse_is_refused_before_sending(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await sync(client)
    message = {
        "phone_number_id": PN,
        "to": CUSTOMER,
        "type": "template",
        "template": tpl("order_update", "en", body_of("Ana", "#1\n#2")),
    }
    r = await client.post("/v1/messages", json=message)
    problem = assert_problem(r, 422, "template_parameters_invalid")
    assert (problem["component"], problem["parameter"]) == ("body", "{{2}}")
    assert meta.requests == [] and await count(engine, "messages") == 0
