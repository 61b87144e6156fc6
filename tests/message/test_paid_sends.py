"""The paid side of the send path, through POST /v1/messages with the simulator as Meta: template checks,
marketing consent, cost estimates and budgets — two replicas included."""

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem, metric
from tests.factories import PN, WABA, delivery, signed, status
from tests.upstream import Gated, count, open_window
from window_gate.app import create_app
from window_gate.config import Settings
from window_gate.sandbox import SimulatorConfig, create_simulator, simulator_state

BR = "5511987654321"  # market Brazil: marketing 0.0630 USD in the example rate card


@pytest.fixture
def simulator() -> FastAPI:
    return create_simulator(SimulatorConfig(throughput_per_second=100_000))


@pytest.fixture
def upstream(simulator: FastAPI) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=simulator)


@pytest.fixture
async def synced(gate: Gated) -> Gated:
    client, _ = gate
    assert (await client.post("/v1/templates/sync", json={"waba_ids": [WABA]})).status_code == 200
    return gate


def template(name: str, language: str = "en", *params: str, to: str = BR) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "language": {"code": language}}
    if params:
        body["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}]
    return {"phone_number_id": PN, "to": to, "type": "template", "template": body}


def sends(simulator: FastAPI) -> int:
    return int(simulator_state(simulator).stats()["sends"])


async def test_paused_template_is_refused_before_it_costs_anything(synced: Gated, simulator: FastAPI) -> None:
    client, engine = synced
    r = await client.post("/v1/messages", json=template("old_promo"))
    assert_problem(r, 422, "template_not_approved")
    assert r.json()["template_status"] == "PAUSED"
    assert sends(simulator) == 0 and await count(engine, "messages") == 0


async def test_unknown_template_and_wrong_parameters_are_refused(synced: Gated, simulator: FastAPI) -> None:
    client, _ = synced
    assert_problem(await client.post("/v1/messages", json=template("no_such")), 422, "template_not_found")
    wrong = await client.post("/v1/messages", json=template("order_update", "en", "Ana"))
    assert_problem(wrong, 422, "template_parameters_invalid")
    assert wrong.json()["component"].lower() == "body"
    ok = await client.post("/v1/messages", json=template("order_update", "en", "Ana", "#42"))
    assert ok.status_code == 201, ok.text
    assert sends(simulator) == 1


async def test_marketing_refused_to_opted_out_customer_utility_still_passes(synced: Gated) -> None:
    client, _ = synced
    assert (await client.put(f"/v1/opt-outs/{PN}/+55 11 98765-4321")).status_code == 200
    refused = await client.post("/v1/messages", json=template("spring_sale", "en", "Ana"))
    assert_problem(refused, 409, "opted_out")
    assert refused.json()["consent"]["source"] == "api"
    assert (
        await client.post("/v1/messages", json=template("order_update", "en", "Ana", "#1"))
    ).status_code == 201


US = "+1 415 555 0100"


async def test_marketing_template_to_a_us_number_refused_before_it_costs_anything(
    synced: Gated, simulator: FastAPI
) -> None:
    client, engine = synced
    refused = await client.post("/v1/messages", json=template("spring_sale", "en", "Ana", to=US))
    problem = assert_problem(refused, 409, "marketing_unavailable")
    assert (problem["country"], problem["effective_from"]) == ("US", "2025-04-01")
    assert sends(simulator) == 0 and await count(engine, "messages") == 0
    # Utility still reaches US numbers; Canada shares +1 but not the restriction.
    utility = await client.post("/v1/messages", json=template("order_update", "en", "Ana", "#1", to=US))
    assert utility.status_code == 201, utility.text
    canada = await client.post(
        "/v1/messages", json=template("spring_sale", "en", "Ana", to="+1 416 555 0100")
    )
    assert canada.status_code == 201, canada.text
    assert sends(simulator) == 2


async def test_us_marketing_refusal_has_metas_shape_through_the_graph_pass_through(
    synced: Gated, simulator: FastAPI
) -> None:
    client, _ = synced
    body = {k: v for k, v in template("spring_sale", "en", "Ana", to=US).items() if k != "phone_number_id"}
    r = await client.post(f"/graph/v25.0/{PN}/messages", json={"messaging_product": "whatsapp", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 131049 and error["window_gate"]["code"] == "marketing_unavailable"
    assert sends(simulator) == 0


async def test_us_marketing_passes_with_the_restrictions_switched_off(
    synced: Gated, settings: Settings, simulator: FastAPI
) -> None:
    client, _ = synced
    unrestricted = settings.model_copy(update={"marketing_restrictions": False})
    app = create_app(unrestricted, httpx.ASGITransport(app=simulator))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gate", headers=client.headers
        ) as other,
    ):
        sent = await other.post("/v1/messages", json=template("spring_sale", "en", "Ana", to=US))
    assert sent.status_code == 201, sent.text
    assert sent.json()["pricing_estimate"]["market"] == "North America"


async def test_utility_template_inside_the_window_is_billed_since_october_2026(synced: Gated) -> None:
    client, _ = synced
    await open_window(client, BR)
    sent = await client.post("/v1/messages", json=template("order_update", "en", "Ana", "#2"))
    estimate = sent.json()["pricing_estimate"]
    assert estimate["inside_csw"] is True and estimate["billable"] is True
    assert Decimal(estimate["amount"]) == Decimal("0.007") and estimate["unsure"] is True


async def test_send_records_a_cost_estimate(synced: Gated) -> None:
    client, engine = synced
    paid = (await client.post("/v1/messages", json=template("spring_sale", "en", "Ana"))).json()
    assert paid["pricing_estimate"]["billable"] is True
    assert paid["pricing_estimate"]["market"] == "Brazil"
    assert Decimal(paid["pricing_estimate"]["amount"]) == Decimal("0.063")
    await open_window(client, BR)
    service = await client.post(
        "/v1/messages", json={"phone_number_id": PN, "to": BR, "type": "text", "text": {"body": "hi"}}
    )
    assert service.json()["pricing_estimate"]["billable"] is False
    async with engine.connect() as conn:
        amounts = sorted((await conn.execute(text("SELECT estimated_amount FROM messages"))).scalars())
    assert amounts == [Decimal(0), Decimal("0.063")]


async def test_budget_refuses_the_send_that_would_pass_it(synced: Gated, simulator: FastAPI) -> None:
    client, engine = synced
    r = await client.put(f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": "0.10", "currency": "USD"})
    assert r.status_code == 200, r.text
    before = (await client.get("/metrics")).text
    assert (await client.post("/v1/messages", json=template("spring_sale", "en", "Ana"))).status_code == 201
    refused = await client.post("/v1/messages", json=template("spring_sale", "en", "Ana"))
    assert_problem(refused, 402, "budget_exceeded")
    assert sends(simulator) == 1 and await count(engine, "messages") == 1
    after = (await client.get("/metrics")).text

    def grew(name: str, **labels: str) -> float:
        return round(metric(after, name, **labels) - metric(before, name, **labels), 6)

    assert grew("window_gate_spend_estimated_total", currency="USD", category="marketing") == 0.063
    assert grew("window_gate_budget_refusals_total", scope="phone_number") == 1
    assert grew("window_gate_sends_total", kind="template", outcome="accepted") == 1
    assert grew("window_gate_sends_total", kind="template", outcome="refused") == 1
    assert grew("window_gate_refusals_total", route="/v1/messages", code="budget_exceeded") == 1


@pytest.fixture
async def replicas(settings: Settings, simulator: FastAPI) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two gates, each with its own engine and pool, on one database: what two replicas share."""
    async with (
        LifespanManager(create_app(settings, httpx.ASGITransport(app=simulator))) as one,
        LifespanManager(create_app(settings, httpx.ASGITransport(app=simulator))) as two,
    ):
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://gate")
            for m in (one, two)
        ]
        yield clients
        for client in clients:
            await client.aclose()


async def test_two_replicas_sending_at_once_cannot_overspend(
    synced: Gated, replicas: list[httpx.AsyncClient], simulator: FastAPI, engine: AsyncEngine
) -> None:
    client, _ = synced
    limit = Decimal("0.063") * 7  # room for exactly 7 marketing templates to Brazil
    await client.put(f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": str(limit), "currency": "USD"})
    headers = dict(client.headers)
    answers = await asyncio.gather(
        *(
            replica.post("/v1/messages", json=template("spring_sale", "en", f"n{i}"), headers=headers)
            for i in range(20)
            for replica in replicas
        )
    )
    codes = sorted(a.status_code for a in answers)
    assert codes.count(201) == 7 and codes.count(402) == 33
    assert sends(simulator) == 7
    async with engine.connect() as conn:
        query = text("SELECT spent FROM budget_spend WHERE scope = 'phone_number' AND scope_id = :pn")
        spent = (await conn.execute(query, {"pn": PN})).scalar_one()
    assert spent == limit


async def test_template_failure_reported_late_by_webhook_updates_the_registry(synced: Gated) -> None:
    client, _ = synced
    sent = (await client.post("/v1/messages", json=template("order_update", "en", "Ana", "#7"))).json()
    failed = status(BR, code=132015) | {
        "id": sent["graph_message_id"],
        "biz_opaque_callback_data": f"wg:{sent['id']}",
    }
    body, headers = signed(delivery(statuses=[failed]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    listed = (await client.get("/v1/templates", params={"name": "order_update"})).json()["templates"]
    assert [t["status"] for t in listed] == ["PAUSED"]
    again = await client.post("/v1/messages", json=template("order_update", "en", "Ana", "#8"))
    assert_problem(again, 422, "template_not_approved")


async def test_budget_given_back_when_meta_refuses_the_send(synced: Gated, simulator: FastAPI) -> None:
    client, _ = synced
    await client.put(f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": "0.063", "currency": "USD"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator), base_url="http://meta"
    ) as meta:
        assert (await meta.post("/sandbox/faults", json={"error_5xx_rate": 1.0})).status_code == 200
        refused = await client.post("/v1/messages", json=template("spring_sale", "en", "Ana"))
        assert_problem(refused, 502, "upstream_error")
        await meta.delete("/sandbox/faults")
    sent = await client.post("/v1/messages", json=template("spring_sale", "en", "Ana"))
    assert sent.status_code == 201, sent.text  # the refused send's reservation was released
    record = (await client.get(f"/v1/messages/{refused.json()['id']}")).json()
    assert record["status"] == "failed"
