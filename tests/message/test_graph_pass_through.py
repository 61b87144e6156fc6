"""POST /graph/{version}/{phone_number_id}/messages as SDKs use it beyond sends: mark as read (with or
without a typing indicator) passes straight to Meta, and Meta's own errors keep Meta's HTTP status."""

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import bearer, make_key
from tests.factories import PN
from tests.upstream import Gated, Meta, count, meta_error
from window_gate.apikey.rules import Role
from window_gate.sandbox import SimulatorConfig, create_simulator, simulator_state

URL = f"/graph/v25.0/{PN}/messages"
READ = {
    "messaging_product": "whatsapp",
    "status": "read",
    "message_id": "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNF",
}
TYPING = {**READ, "typing_indicator": {"type": "text"}}
TEMPLATE = {
    "messaging_product": "whatsapp",
    "to": "5511987654321",
    "type": "template",
    "template": {"name": "hello_world", "language": {"code": "en_US"}},
}


@pytest.fixture
def simulator() -> FastAPI:
    return create_simulator(SimulatorConfig())


@pytest.fixture
def upstream(simulator: FastAPI) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=simulator)


async def test_mark_as_read_answers_metas_success_and_records_nothing(
    gate: Gated, simulator: FastAPI
) -> None:
    """No window is open (the customer never wrote): a status update is not a send, so nothing is
    checked, recorded or counted; Meta's answer is the answer."""
    client, engine = gate
    for body in (READ, TYPING):
        r = await client.post(URL, json=body, headers={"Idempotency-Key": "same"})
        assert (r.status_code, r.json()) == (200, {"success": True}), r.text
    stats = simulator_state(simulator).stats()
    assert (stats["marked_read"], stats["sends"]) == (2, 0)
    assert await count(engine, "messages") == 0


async def test_mark_as_read_needs_a_key_that_may_send_for_the_number(
    client: httpx.AsyncClient, engine: AsyncEngine, simulator: FastAPI
) -> None:
    for key in (
        await make_key(engine, Role.READ, (PN,)),
        await make_key(engine, Role.SEND, ("555000111222333",)),
    ):
        r = await client.post(URL, json=READ, headers=bearer(key))
        assert r.status_code == 403 and r.json()["error"]["code"] == 10, r.text
    assert simulator_state(simulator).stats()["marked_read"] == 0
    ok = await client.post(URL, json=READ, headers=bearer(await make_key(engine, Role.SEND, (PN,))))
    assert ok.json() == {"success": True}


async def test_a_status_update_that_names_a_recipient_is_refused_unsent(
    gate: Gated, simulator: FastAPI
) -> None:
    """`status` beside `to` could be a send the window check never saw."""
    client, engine = gate
    r = await client.post(URL, json={**TEMPLATE, "status": "read", "message_id": "wamid.X"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 100, r.text
    assert r.json()["error"]["window_gate"]["code"] == "validation_error"
    stats = simulator_state(simulator).stats()
    assert (stats["marked_read"], stats["sends"]) == (0, 0) and await count(engine, "messages") == 0


async def test_metas_refusal_of_a_status_update_is_passed_on(gate: Gated) -> None:
    client, _ = gate
    r = await client.post(URL, json={"messaging_product": "whatsapp", "status": "read"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 100, r.text
    assert "message_id" in r.json()["error"]["error_data"]["details"]
    assert "window_gate" not in r.json()["error"]  # Meta's own words


async def test_a_meta_failure_keeps_its_500(gate: Gated, simulator: FastAPI) -> None:
    client, _ = gate
    simulator_state(simulator).faults.error_5xx_rate = 1
    r = await client.post(URL, json=TEMPLATE)
    assert r.status_code == 500 and r.json()["error"]["code"] == 131000, r.text


class TestWithScriptedMeta:
    @pytest.fixture
    def upstream(self, meta: Meta) -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(meta)

    @pytest.mark.parametrize(("code", "status"), [(190, 401), (132001, 404), (131000, 500), (131047, 400)])
    async def test_metas_own_error_keeps_metas_http_status(
        self, gate: Gated, meta: Meta, code: int, status: int
    ) -> None:
        client, _ = gate
        meta.reply = meta_error(code, "as Meta wrote it", http_status=status)
        r = await client.post(URL, json=TEMPLATE)
        assert r.status_code == status, r.text
        assert r.json() == {
            "error": {
                "message": f"(#{code}) as Meta wrote it",
                "type": "OAuthException",
                "code": code,
                "fbtrace_id": "X",
            }
        }
        again = await client.post(URL, json=TEMPLATE, headers={"Idempotency-Key": f"k{code}"})
        replayed = await client.post(URL, json=TEMPLATE, headers={"Idempotency-Key": f"k{code}"})
        assert again.status_code == replayed.status_code == status  # a replay answers as the first did
        assert len(meta.requests) == 2
