"""Meta's refusals injected in the simulator, the gate's real upstream here (its webhooks come back into the
gate): each answered with its own code, and Meta's hold on one customer's marketing remembered, so that the
gate refuses that customer's next marketing template itself, before anything is paid or sent."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem
from tests.factories import PN
from tests.upstream import count
from window_gate.sandbox import SimulatorConfig, SimulatorState, create_simulator, simulator_state

CUSTOMER, OTHER = "+55 11 98765-4321", "+55 11 97777-0000"


@dataclass
class Loop:
    gate: httpx.AsyncClient | None = None


@pytest.fixture
def loop() -> Loop:
    return Loop()


@pytest.fixture
async def simulator(loop: Loop) -> AsyncIterator[FastAPI]:
    async def into_the_gate(request: httpx.Request) -> httpx.Response:
        assert loop.gate is not None
        headers = {k: request.headers[k] for k in ("content-type", "x-hub-signature-256")}
        answer = await loop.gate.post(request.url.path, content=request.content, headers=headers)
        return httpx.Response(answer.status_code, content=answer.content)

    app = create_simulator(
        SimulatorConfig(
            webhook_url="http://gate/webhooks/whatsapp",
            webhook_transport=httpx.MockTransport(into_the_gate),
            status_delays=(0.0, 0.0, 0.0),
            webhook_retry_delays=(0.01,),
        )
    )
    yield app
    await simulator_state(app).aclose()


@pytest.fixture
def upstream(simulator: FastAPI) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=simulator)


@pytest.fixture
async def gate(
    client: httpx.AsyncClient, admin_headers: dict[str, str], loop: Loop, simulator: FastAPI
) -> httpx.AsyncClient:
    """The gate with an admin key, its registry synced from the simulator."""
    client.headers.update(admin_headers)
    loop.gate = client
    assert (await client.post("/v1/templates/sync")).status_code == 200
    return client


def state(simulator: FastAPI) -> SimulatorState:
    return simulator_state(simulator)


async def inject(gate: httpx.AsyncClient, simulator: FastAPI, *errors: dict[str, Any]) -> None:
    sim = httpx.AsyncClient(transport=httpx.ASGITransport(app=simulator), base_url="http://sim")
    async with sim:
        r = await sim.post("/sandbox/faults", json={"errors": list(errors)})
        assert r.status_code == 200, r.text


def spring_sale(to: str = CUSTOMER) -> dict[str, Any]:
    """A MARKETING template of the simulator's registry."""
    parameters = [{"type": "text", "text": "Ana"}]
    template = {
        "name": "spring_sale",
        "language": {"code": "en"},
        "components": [{"type": "body", "parameters": parameters}],
    }
    return {"phone_number_id": PN, "to": to, "type": "template", "template": template}


def order_update(to: str = CUSTOMER) -> dict[str, Any]:
    """A UTILITY template of the simulator's registry."""
    parameters = [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#1"}]
    template = {
        "name": "order_update",
        "language": {"code": "en"},
        "components": [{"type": "body", "parameters": parameters}],
    }
    return {"phone_number_id": PN, "to": to, "type": "template", "template": template}


@pytest.mark.parametrize(
    ("code", "gate_code", "status"),
    [
        (131049, "marketing_limited", 429),
        (130472, "marketing_limited", 429),
        (131026, "undeliverable", 422),
        (131056, "rate_limited", 429),
    ],
)
async def test_each_injected_meta_error_is_answered_with_its_code(
    gate: httpx.AsyncClient, simulator: FastAPI, code: int, gate_code: str, status: int
) -> None:
    await inject(gate, simulator, {"code": code, "rate": 1})
    problem: dict[str, Any] = assert_problem(
        await gate.post("/v1/messages", json=spring_sale()), status, gate_code
    )
    assert problem["meta_error"]["error"]["code"] == code
    assert state(simulator).stats()["errors"] == {str(code): 1}


async def test_marketing_limit_answered_at_once_holds_that_customers_marketing_for_24h(
    gate: httpx.AsyncClient, simulator: FastAPI, engine: AsyncEngine
) -> None:
    await inject(gate, simulator, {"code": 131049, "rate": 1})
    first = assert_problem(await gate.post("/v1/messages", json=spring_sale()), 429, "marketing_limited")
    assert first["retry_after"] == 86_400
    await inject(gate, simulator)  # Meta would take it now: the gate must not even ask
    sends = state(simulator).stats()["sends"]
    r = await gate.post("/v1/messages", json=spring_sale())
    again: dict[str, Any] = assert_problem(r, 429, "marketing_limited")
    assert 86_300 < int(r.headers["retry-after"]) <= 86_400
    assert again["hold"]["code"] == 131049 and again["customer"]["wa_id"]
    assert "meta_error" not in again
    assert state(simulator).stats()["sends"] == sends and await count(engine, "messages") == 1
    # Utility templates to that customer, and marketing to others, still pass.
    assert (await gate.post("/v1/messages", json=order_update())).status_code == 201
    assert (await gate.post("/v1/messages", json=spring_sale(OTHER))).status_code == 201


async def test_marketing_limit_in_a_failed_status_holds_that_customers_marketing(
    gate: httpx.AsyncClient, simulator: FastAPI
) -> None:
    """Meta mostly accepts the send and reports 131049 later, in the status webhook."""
    await inject(gate, simulator, {"code": 131049, "rate": 1, "in_status": True})
    sent = await gate.post("/v1/messages", json=spring_sale())
    assert sent.status_code == 201, sent.text
    await state(simulator).idle()
    record = (await gate.get(f"/v1/messages/{sent.json()['id']}")).json()
    assert record["status"] == "failed" and record["error"]["code"] == 131049
    assert record["error"]["href"].startswith("https://developers.facebook.com/")
    await inject(gate, simulator)
    problem: dict[str, Any] = assert_problem(
        await gate.post("/v1/messages", json=spring_sale()), 429, "marketing_limited"
    )
    assert problem["hold"]["code"] == 131049
    graph = {k: v for k, v in spring_sale().items() if k != "phone_number_id"} | {
        "messaging_product": "whatsapp"
    }
    passed = await gate.post(f"/graph/v25.0/{PN}/messages", json=graph)
    assert passed.status_code == 400
    error = passed.json()["error"]
    assert error["code"] == 131049 and error["window_gate"]["code"] == "marketing_limited"
    assert 86_300 < int(passed.headers["retry-after"]) <= 86_400
