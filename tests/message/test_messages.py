"""Gated sending against a scripted Graph API (httpx.MockTransport), on real PostgreSQL."""

import asyncio
import time
import uuid
from datetime import datetime

import httpx
from sqlalchemy import text

from tests.conftest import sealed
from tests.factories import PN, delivery, signed, status
from tests.upstream import WA, Gated, Meta, count, meta_error, open_window, template_message, text_message


async def test_free_form_passes_inside_window_and_is_recorded(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    await open_window(client)
    r = await client.post("/v1/messages", json=text_message())
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["status"] == "accepted" and sent["graph_message_id"] == "wamid.T1"
    assert sent["recipient"] == {"input": "+55 11 98765-4321", "wa_id": WA}
    assert sent["window"]["state"] == "open"
    assert meta.requests[0]["biz_opaque_callback_data"] == f"wg:{sent['id']}"
    assert "phone_number_id" not in meta.requests[0]
    record = (await client.get(f"/v1/messages/{sent['id']}")).json()
    assert [e["status"] for e in record["history"]] == ["pending", "accepted"]


async def test_message_ids_are_uuidv7_in_the_order_made(gate: Gated, meta: Meta) -> None:
    """Time-ordered ids (message/service.py: new_id): version 7, each after the one before, the time they
    carry the record's created_at (to the clock's skew between Python and PostgreSQL, both this machine's)."""
    client, _ = gate
    await open_window(client)
    sent = [await client.post("/v1/messages", json=text_message()) for _ in range(5)]
    ids = [uuid.UUID(r.json()["id"]) for r in sent]
    assert [i.version for i in ids] == [7] * 5 and ids == sorted(ids) and len(set(ids)) == 5
    for made in ids:
        created = datetime.fromisoformat((await client.get(f"/v1/messages/{made}")).json()["created_at"])
        assert abs(created.timestamp() * 1000 - (made.int >> 80)) < 1000


async def test_a_number_with_its_own_token_sends_with_it(gate: Gated, meta: Meta) -> None:
    """Free sends (one statement on the hot pool) and paid ones (a transaction) read the token alike."""
    client, engine = gate
    await open_window(client)
    assert (await client.post("/v1/messages", json=text_message())).status_code == 201
    async with engine.begin() as conn:  # the webhook registered the number (with its account)
        await conn.execute(
            text("UPDATE phone_numbers SET access_token_encrypted = :t WHERE phone_number_id = :pn"),
            {"pn": PN, "t": sealed("number-token")},
        )
    assert (await client.post("/v1/messages", json=text_message())).status_code == 201
    paid = await client.post("/v1/messages", json=template_message())
    assert paid.status_code == 201 and paid.json()["pricing_estimate"]["billable"]
    assert meta.tokens == ["Bearer sandbox", "Bearer number-token", "Bearer number-token"]


async def test_free_form_refused_after_24h(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await open_window(client, ts=time.time() - 25 * 3600)
    r = await client.post("/v1/messages", json=text_message())
    assert r.status_code == 409
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["code"] == "window_closed" and problem["window"]["state"] == "expired"
    assert "template" in problem["hint"]
    assert meta.requests == [] and await count(engine, "messages") == 0


async def test_template_passes_when_window_never_opened(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    r = await client.post("/v1/messages", json=template_message())
    assert r.status_code == 201, r.text
    assert r.json()["window"]["state"] == "never_opened" and len(meta.requests) == 1


async def test_alias_learnt_from_meta_answer(gate: Gated) -> None:
    client, _ = gate
    await client.post("/v1/messages", json=template_message("+52 1 55 1234 5678"))  # Meta answers wa_id WA
    await open_window(client, WA)
    r = await client.get(f"/v1/windows/{PN}/+52 1 55 1234 5678")
    assert r.json()["state"] == "open" and r.json()["customer"]["wa_id"] == WA


async def test_argentine_number_without_the_9_learnt_from_meta_not_guessed(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    mobile, written = "5491123456789", "+54 11 2345 6789"
    await open_window(client, mobile)
    r = await client.get(f"/v1/windows/{PN}/{written}")
    assert r.json()["state"] == "never_opened"  # may be a landline: its 9 is not guessed
    meta.wa_id = mobile  # Meta says whose account that spelling is
    assert (await client.post("/v1/messages", json=template_message(written))).status_code == 201
    r = await client.get(f"/v1/windows/{PN}/{written}")
    assert r.json()["state"] == "open" and r.json()["customer"]["wa_id"] == mobile


async def test_idempotency_replays_first_answer_and_conflicts_on_other_body(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    await open_window(client)
    first = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "k1"})
    again = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"] and len(meta.requests) == 1
    other = await client.post(
        "/v1/messages", json=text_message(text={"body": "x"}), headers={"Idempotency-Key": "k1"}
    )
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"


async def test_fifty_concurrent_retries_make_one_upstream_call(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await open_window(client)
    meta.delay = 0.2
    answers = await asyncio.gather(
        *(
            client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": "same"})
            for _ in range(50)
        )
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(meta.requests) == 1 and await count(engine, "messages") == 1


async def test_meta_131047_closes_window(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    await open_window(client)
    meta.reply = meta_error(131047, "Re-engagement message")
    r = await client.post("/v1/messages", json=text_message())
    assert r.status_code == 409 and r.json()["meta_error"]["error"]["code"] == 131047
    window = (await client.get(f"/v1/windows/{PN}/{WA}")).json()
    assert window["state"] == "closed_by_meta" and window["can_send_free_form"] is False


async def test_throttled_by_meta_is_429_with_retry_after(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    meta.reply = meta_error(131056, "pair rate limit")
    r = await client.post("/v1/messages", json=template_message())
    assert r.status_code == 429 and r.json()["code"] == "rate_limited" and r.headers["retry-after"] == "6"


async def test_timeout_is_unknown_and_never_resent(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    meta.delay = 0.01

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    meta.reply = hang
    r = await client.post("/v1/messages", json=template_message(), headers={"Idempotency-Key": "t"})
    assert r.status_code == 504 and r.json()["code"] == "upstream_timeout"
    again = await client.post("/v1/messages", json=template_message(), headers={"Idempotency-Key": "t"})
    assert again.status_code == 504 and len(meta.requests) == 1
    record = (await client.get(f"/v1/messages/{r.json()['id']}")).json()
    assert record["status"] == "unknown"


async def test_status_webhooks_update_the_record(gate: Gated) -> None:
    client, _ = gate
    sent = (await client.post("/v1/messages", json=template_message())).json()
    for state in ("sent", "delivered", "read"):
        st = status(WA, state=state, code=None) | {
            "id": sent["graph_message_id"],
            "biz_opaque_callback_data": f"wg:{sent['id']}",
            "pricing": {"category": "utility", "type": "regular"},
        }
        body, headers = signed(delivery(statuses=[st]))
        assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    record = (await client.get(f"/v1/messages/{sent['id']}")).json()
    assert record["status"] == "read" and record["pricing"]["category"] == "utility"
    assert [e["status"] for e in record["history"]] == ["pending", "accepted", "sent", "delivered", "read"]


async def test_graph_pass_through_renders_closed_window_as_meta(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    body = {"messaging_product": "whatsapp", "to": WA, "type": "text", "text": {"body": "hi"}}
    r = await client.post(f"/graph/v25.0/{PN}/messages", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 131047 and error["type"] == "OAuthException" and error["fbtrace_id"]
    await open_window(client)
    ok = await client.post(f"/graph/v25.0/{PN}/messages", json=body)
    assert ok.status_code == 200 and ok.json()["messages"][0]["id"].startswith("wamid.")
