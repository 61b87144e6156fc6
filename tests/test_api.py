"""The HTTP contract backend services code against: auth, window lookups, batch checks, errors, probes."""

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem, bearer, make_key, metric
from tests.factories import PN, delivery, inbound, signed
from window_gate import db
from window_gate.apikey.rules import Role
from window_gate.app import create_app
from window_gate.config import Settings
from window_gate.sandbox import in_process

OTHER_PN = "109999999999999"
WINDOW_ROUTE = "/v1/windows/{phone_number_id}/{customer}"


async def open_window(client: httpx.AsyncClient, wa_id: str) -> None:
    body, headers = signed(delivery([inbound(wa_id)]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200


# --- authentication and authorisation ---


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer wg_not-a-key-this-gate-issued", "wg_no_scheme"],
    ids=["missing", "wrong-scheme", "empty-bearer", "unknown-key", "bare-key"],
)
async def test_v1_refuses_requests_without_a_valid_key(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for r in (
        await client.get(f"/v1/windows/{PN}/5511987654321", headers=headers),
        await client.post(
            "/v1/windows/check", json={"phone_number_id": PN, "customers": ["1"]}, headers=headers
        ),
    ):
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"


async def test_api_keys_are_stored_hashed_never_in_clear(engine: AsyncEngine) -> None:
    key = await make_key(engine, Role.READ, ("123",))
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT key_hash, key_prefix, api_keys::text AS whole FROM api_keys"))
        ).all()
    assert rows and not [r for r in rows if key in r.whole]
    [row] = [r for r in rows if r.key_hash == hashlib.sha256(key.encode()).hexdigest()]
    assert key.startswith(row.key_prefix) and len(row.key_prefix) < len(key) // 2


async def test_read_role_can_look_up_windows(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = bearer(await make_key(engine, Role.READ))
    assert (await client.get(f"/v1/windows/{PN}/5511987654321", headers=headers)).status_code == 200
    r = await client.post(
        "/v1/windows/check", json={"phone_number_id": PN, "customers": ["5511987654321"]}, headers=headers
    )
    assert r.status_code == 200, r.text


async def test_key_limited_to_a_number_is_forbidden_for_other_numbers(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = bearer(await make_key(engine, Role.READ, (PN,)))
    assert (await client.get(f"/v1/windows/{PN}/5511987654321", headers=headers)).status_code == 200
    body = assert_problem(
        await client.get(f"/v1/windows/{OTHER_PN}/5511987654321", headers=headers), 403, "forbidden"
    )
    assert body["phone_number_id"] == OTHER_PN
    r = await client.post(
        "/v1/windows/check",
        json={"phone_number_id": OTHER_PN, "customers": ["5511987654321"]},
        headers=headers,
    )
    assert_problem(r, 403, "forbidden")


# --- single window lookup ---


async def test_never_seen_customer_is_not_an_error(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.get(f"/v1/windows/{PN}/+1 (415) 555-0100", headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "never_opened"
    assert body["can_send_free_form"] is False
    assert body["seconds_remaining"] == 0
    assert body["last_inbound_at"] is None and body["expires_at"] is None and body["safe_until"] is None
    assert body["phone_number_id"] == PN
    assert body["customer"] == {"input": "+1 (415) 555-0100", "wa_id": "14155550100", "user_id": None}


@pytest.mark.parametrize("customer", ["hello", "12345", "+55 11 9876-ABCD", "1234567890123456"])
async def test_nonsense_customer_is_invalid_recipient(
    client: httpx.AsyncClient, admin_headers: dict[str, str], customer: str
) -> None:
    body = assert_problem(
        await client.get(f"/v1/windows/{PN}/{customer}", headers=admin_headers), 422, "invalid_recipient"
    )
    assert body["customer"] == customer


# --- batch check ---


async def test_check_answers_in_the_order_asked_whatever_the_spelling(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await open_window(client, "5511987654321")
    customers = [
        "+1 415 555 0100",
        "+55 11 98765-4321",
        "US.13491208655302741918",
        "005511987654321",
        "551187654321",
    ]
    r = await client.post(
        "/v1/windows/check", json={"phone_number_id": PN, "customers": customers}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    windows = r.json()["windows"]
    assert [w["customer"]["input"] for w in windows] == customers
    assert [w["state"] for w in windows] == ["never_opened", "open", "never_opened", "open", "open"]
    assert [w["can_send_free_form"] for w in windows] == [False, True, False, True, True]
    assert {w["customer"]["wa_id"] for w in windows if w["state"] == "open"} == {"5511987654321"}


async def test_check_takes_up_to_1000_customers(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    customers = [f"+1555{i:07d}" for i in range(1000)]
    r = await client.post(
        "/v1/windows/check", json={"phone_number_id": PN, "customers": customers}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    assert [w["customer"]["input"] for w in r.json()["windows"]] == customers
    r = await client.post(
        "/v1/windows/check",
        json={"phone_number_id": PN, "customers": [*customers, "+15559999999"]},
        headers=admin_headers,
    )
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize(
    "payload",
    [
        {"phone_number_id": PN, "customers": []},
        {"phone_number_id": PN},
        {"customers": ["5511987654321"]},
        {"phone_number_id": PN, "customers": "5511987654321"},
        {"phone_number_id": PN, "customers": [5511987654321]},
        {"phone_number_id": ["x"], "customers": ["5511987654321"]},
        {"phone_number_id": "", "customers": ["5511987654321"]},
        [PN, "5511987654321"],
    ],
    ids=[
        "empty-list",
        "no-customers",
        "no-number",
        "string-not-list",
        "int-customer",
        "list-number",
        "empty-number",
        "array",
    ],
)
async def test_check_refuses_malformed_bodies(
    client: httpx.AsyncClient, admin_headers: dict[str, str], payload: Any
) -> None:
    body = assert_problem(
        await client.post("/v1/windows/check", json=payload, headers=admin_headers), 422, "validation_error"
    )
    assert isinstance(body["errors"], list) and body["errors"]


async def test_check_refuses_unparseable_json(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.post(
        "/v1/windows/check",
        content=b'{"phone_number_id": "1", "customers": [',
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert_problem(r, 422, "validation_error")


async def test_one_invalid_customer_refuses_the_batch_naming_its_index(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    customers = ["5511987654321", "+1 415 555 0100", "not a phone"]
    r = await client.post(
        "/v1/windows/check", json={"phone_number_id": PN, "customers": customers}, headers=admin_headers
    )
    body = assert_problem(r, 422, "invalid_recipient")
    assert body["index"] == 2 and body["customer"] == "not a phone"


# --- errors outside the routes ---


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404, "not_found")


async def test_window_check_and_webhook_bypass_fastapi_routing(
    client: httpx.AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two hottest calls are answered before FastAPI's router (app.HotPaths), errors included."""

    async def routed(*_: object) -> None:
        raise AssertionError("reached FastAPI's router")

    monkeypatch.setattr(APIRouter, "__call__", routed)
    assert (await client.get(f"/v1/windows/{PN}/5511987654321", headers=admin_headers)).status_code == 200
    assert_problem(await client.get(f"/v1/windows/{PN}/5511987654321"), 401, "unauthorized")
    body, headers = signed(delivery([inbound("5511987654321")]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    with pytest.raises(AssertionError, match="router"):
        await client.get("/healthz")


@pytest.fixture
async def small_body_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"max_body_bytes": 1024}), in_process)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://gate") as c,
    ):
        yield c


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 256):
        yield data[i : i + 256]


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/v1/windows/check", "/webhooks/whatsapp"])
async def test_body_over_the_limit_is_refused_with_413(
    small_body_client: httpx.AsyncClient, engine: AsyncEngine, path: str, streamed: bool
) -> None:
    payload = orjson.dumps({"phone_number_id": PN, "customers": ["5511987654321"] * 100})
    assert len(payload) > 1024
    headers = {**bearer(await make_key(engine)), "Content-Type": "application/json"}
    content: bytes | AsyncIterator[bytes] = _chunks(payload) if streamed else payload
    r = await small_body_client.post(path, content=content, headers=headers)
    assert "1024 bytes" in str(assert_problem(r, 413, "payload_too_large")["detail"])
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM webhook_deliveries"))).scalar_one() == 0


# --- operations ---


async def test_healthz_answers(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_readyz_reports_the_migrated_revision(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "revision": db.head_revision()}
    assert db.head_revision() is not None


async def test_metrics_count_requests_by_route_decisions_and_webhook_items(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    before = (await client.get("/metrics")).text
    assert (await client.get(f"/v1/windows/{PN}/+1 415 555 0100", headers=admin_headers)).status_code == 200
    await open_window(client, "5511987654321")
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("window_gate_http_requests_total", method="GET", route=WINDOW_ROUTE, status="200") == 1
    assert grew("window_gate_window_decisions_total", state="never_opened") == 1
    assert grew("window_gate_webhook_messages_total", type="text", outcome="opened") == 1
    assert (
        grew("window_gate_http_requests_total", method="POST", route="/webhooks/whatsapp", status="200") == 1
    )
    assert 'route="/v1/windows/' + PN not in after  # templates, never raw paths: bounded cardinality
