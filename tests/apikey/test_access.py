"""Scopes: every route × every kind of key, generated from the app's own routes, and the attacks that once
passed (a key limited to one number reaching another number's budgets, keys, account and costs)."""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import TABLES, assert_problem, bearer, make_key
from tests.factories import PN, WABA
from tests.upstream import Meta
from window_gate.apikey.rules import Role, hash_key
from window_gate.app import create_app
from window_gate.config import Settings
from window_gate.consent.endpoints import router as consent_router

OTHER = "999000111222333"  # another business number, in another account
OTHER_WABA = "777000111222333"
CUSTOMER = "5511987654321"
RANK = {Role.READ: 0, Role.SEND: 1, Role.ADMIN: 2}
FILTERED = 200  # a listing: a key limited to another number gets it, without the touched number's objects

# Routes anyone may call: Meta's webhooks carry their own signature; operations and docs carry no data.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/webhooks/whatsapp"),
    ("POST", "/webhooks/whatsapp"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}


@dataclass(frozen=True)
class World:
    """What the sample requests touch: number PN (account WABA) and its objects."""

    message_id: str  # a send from PN
    pn_key_id: str  # a key limited to PN: the target of api_key budgets
    spare_key_id: str  # a key limited to PN nobody calls with: the one revoked


@dataclass(frozen=True)
class Sample:
    """One request touching PN, the role it needs, and what a key limited to OTHER gets."""

    role: Role
    url: Callable[[World], str]
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    other: int = 403


def fixed(url: str) -> Callable[[World], str]:
    return lambda _: url


TEMPLATE = {"name": "hello_world", "language": {"code": "en_US"}}
SEND_BODY = {"phone_number_id": PN, "to": CUSTOMER, "type": "template", "template": TEMPLATE}
GRAPH_BODY = {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "template", "template": TEMPLATE}
BUDGET = {"monthly_limit": "100", "currency": "USD"}
READ_MARK = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"}
MEDIA = "1037543291543636"  # a media object of PN, as the upstream below answers it
SUBSCRIPTION = {"url": "http://127.0.0.1:9/x", "events": ["meta.webhook"], "phone_number_ids": [PN]}
SUB_ID, SUB_DELIVERY = "5b0e9a3c-1d2e-4f5a-8b6c-7d8e9f0a1b2c", 4242
SUB = f"/v1/subscriptions/{SUB_ID}"

# Every route but the public ones, with a request that touches PN. A route missing here fails the test
# below: a new route is in the matrix the day it is added.
SAMPLES: dict[tuple[str, str], list[Sample]] = {
    ("GET", "/v1/windows/{phone_number_id}/{customer}"): [
        Sample(Role.READ, fixed(f"/v1/windows/{PN}/{CUSTOMER}"))
    ],
    ("POST", "/v1/windows/check"): [
        Sample(Role.READ, fixed("/v1/windows/check"), {"phone_number_id": PN, "customers": [CUSTOMER]})
    ],
    ("POST", "/v1/messages"): [Sample(Role.SEND, fixed("/v1/messages"), SEND_BODY)],
    ("GET", "/v1/conversations/{phone_number_id}/{customer}"): [
        Sample(Role.READ, fixed(f"/v1/conversations/{PN}/{CUSTOMER}"))
    ],
    ("DELETE", "/v1/conversations/{phone_number_id}/{customer}/held"): [
        Sample(Role.SEND, fixed(f"/v1/conversations/{PN}/{CUSTOMER}/held"))
    ],
    ("GET", "/v1/messages/{message_id}"): [
        Sample(Role.READ, lambda w: f"/v1/messages/{w.message_id}", other=404)
    ],
    ("GET", "/v1/templates"): [Sample(Role.READ, fixed("/v1/templates"), params={"phone_number_id": PN})],
    ("POST", "/v1/templates/sync"): [Sample(Role.ADMIN, fixed("/v1/templates/sync"), {"waba_ids": [WABA]})],
    ("POST", "/v1/templates/{name}/send"): [
        Sample(
            Role.SEND,
            fixed("/v1/templates/hello_world/send"),
            {"phone_number_id": PN, "to": CUSTOMER, "language": "en_US"},
        )
    ],
    ("PUT", "/v1/opt-outs/{phone_number_id}/{customer}"): [
        Sample(Role.SEND, fixed(f"/v1/opt-outs/{PN}/{CUSTOMER}"))
    ],
    ("DELETE", "/v1/opt-outs/{phone_number_id}/{customer}"): [
        Sample(Role.SEND, fixed(f"/v1/opt-outs/{PN}/{CUSTOMER}"))
    ],
    ("GET", "/v1/opt-outs"): [Sample(Role.READ, fixed("/v1/opt-outs"), params={"phone_number_id": PN})],
    ("GET", "/v1/costs"): [
        Sample(Role.READ, fixed("/v1/costs"), params={"group_by": "day", "phone_number_id": PN})
    ],
    ("PUT", "/v1/budgets/{scope}/{scope_id}"): [
        Sample(Role.ADMIN, fixed(f"/v1/budgets/phone_number/{PN}"), BUDGET),
        Sample(Role.ADMIN, lambda w: f"/v1/budgets/api_key/{w.pn_key_id}", BUDGET),
    ],
    ("GET", "/v1/budgets"): [Sample(Role.ADMIN, fixed("/v1/budgets"), other=FILTERED)],
    ("DELETE", "/v1/budgets/{scope}/{scope_id}"): [
        Sample(Role.ADMIN, fixed(f"/v1/budgets/phone_number/{PN}")),
        Sample(Role.ADMIN, lambda w: f"/v1/budgets/api_key/{w.pn_key_id}"),
    ],
    ("POST", "/graph/{version}/{phone_number_id}/messages"): [
        Sample(Role.SEND, fixed(f"/graph/v25.0/{PN}/messages"), GRAPH_BODY),
        Sample(Role.SEND, fixed(f"/graph/v25.0/{PN}/messages"), READ_MARK),
    ],
    # The pass-through: the number, its account, its media (named by phone_number_id).
    ("GET", "/graph/{version:graph_version}/{node}"): [
        Sample(Role.READ, fixed(f"/graph/v25.0/{PN}")),
        Sample(Role.READ, fixed(f"/graph/v25.0/{MEDIA}"), params={"phone_number_id": PN}),
    ],
    ("POST", "/graph/{version:graph_version}/{node}"): [
        Sample(Role.ADMIN, fixed(f"/graph/v25.0/{PN}"), {"pin": "123456"})
    ],
    ("DELETE", "/graph/{version:graph_version}/{node}"): [
        Sample(Role.SEND, fixed(f"/graph/v25.0/{MEDIA}"), params={"phone_number_id": PN})
    ],
    ("GET", "/graph/{version:graph_version}/{node}/{edge:graph_edge}"): [
        Sample(Role.READ, fixed(f"/graph/v25.0/{PN}/whatsapp_business_profile")),
        Sample(Role.READ, fixed(f"/graph/v25.0/{WABA}/message_templates")),
    ],
    ("POST", "/graph/{version:graph_version}/{node}/{edge:graph_edge}"): [
        Sample(Role.SEND, fixed(f"/graph/v25.0/{PN}/media"), {"messaging_product": "whatsapp"}),
        Sample(Role.ADMIN, fixed(f"/graph/v25.0/{WABA}/message_templates"), {"name": "x"}),
    ],
    ("DELETE", "/graph/{version:graph_version}/{node}/{edge:graph_edge}"): [
        Sample(Role.ADMIN, fixed(f"/graph/v25.0/{WABA}/message_templates"), params={"name": "x"})
    ],
    ("GET", "/graph/media/{media_id}"): [
        Sample(Role.READ, fixed(f"/graph/media/{MEDIA}"), params={"phone_number_id": PN})
    ],
    # A subscription filtered to PN (seeded before each caller, with one delivery).
    ("POST", "/v1/subscriptions"): [Sample(Role.ADMIN, fixed("/v1/subscriptions"), SUBSCRIPTION)],
    ("GET", "/v1/subscriptions"): [Sample(Role.ADMIN, fixed("/v1/subscriptions"), other=FILTERED)],
    ("GET", "/v1/subscriptions/{subscription_id}"): [Sample(Role.ADMIN, fixed(SUB), other=404)],
    ("GET", "/v1/subscriptions/{subscription_id}/deliveries"): [
        Sample(Role.ADMIN, fixed(f"{SUB}/deliveries"), other=404)
    ],
    ("POST", "/v1/subscriptions/{subscription_id}/deliveries/{delivery_id}/retry"): [
        Sample(Role.ADMIN, fixed(f"{SUB}/deliveries/{SUB_DELIVERY}/retry"), other=404)
    ],
    ("DELETE", "/v1/subscriptions/{subscription_id}"): [Sample(Role.ADMIN, fixed(SUB), other=404)],
    # PN, registered (seeded by seed_accounts); its token, never shown.
    ("PUT", "/v1/phone-numbers/{phone_number_id}"): [
        Sample(Role.ADMIN, fixed(f"/v1/phone-numbers/{PN}"), {"time_zone": "America/Sao_Paulo"}),
        Sample(Role.ADMIN, fixed(f"/v1/phone-numbers/{PN}"), {"access_token": "EAAG-a-token-of-pn-0123"}),
    ],
    ("GET", "/v1/phone-numbers"): [Sample(Role.ADMIN, fixed("/v1/phone-numbers"), other=FILTERED)],
    ("GET", "/v1/phone-numbers/{phone_number_id}"): [Sample(Role.ADMIN, fixed(f"/v1/phone-numbers/{PN}"))],
    ("DELETE", "/v1/phone-numbers/{phone_number_id}"): [Sample(Role.ADMIN, fixed(f"/v1/phone-numbers/{PN}"))],
    # The key limited to PN (pn_key_id): a limited admin of PN reaches it, one of OTHER does not.
    ("POST", "/v1/api-keys"): [
        Sample(Role.ADMIN, fixed("/v1/api-keys"), {"name": "pn", "role": "send", "phone_number_ids": [PN]})
    ],
    ("GET", "/v1/api-keys"): [Sample(Role.ADMIN, fixed("/v1/api-keys"), other=FILTERED)],
    ("DELETE", "/v1/api-keys/{api_key_id}"): [
        Sample(Role.ADMIN, lambda w: f"/v1/api-keys/{w.spare_key_id}", other=404)
    ],
}


def served(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app serves, read from the app itself (included routers too)."""
    for route in iter_route_contexts(app.routes):
        for method in route.methods or ():
            if method != "HEAD":
                yield method, str(route.path)


@pytest.fixture
def upstream(meta: Meta) -> httpx.AsyncBaseTransport:
    """Meta accepting sends and status updates, listing no templates, answering MEDIA as a media object and
    any other call with success."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/messages"):
            if b'"status"' in request.content:
                return httpx.Response(200, json={"success": True})
            return await meta(request)
        meta.requests.append({"url": str(request.url)})
        if request.url.path.endswith(f"/{MEDIA}") and request.method == "GET":
            media = {"url": "https://lookaside.test/x", "mime_type": "image/png", "id": MEDIA}
            return httpx.Response(200, json={"messaging_product": "whatsapp", **media})
        if request.method == "GET":
            return httpx.Response(200, json={"data": [], "paging": {}})
        return httpx.Response(200, json={"success": True})

    return httpx.MockTransport(handle)


async def key_of(engine: AsyncEngine, key: str) -> str:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT id FROM api_keys WHERE key_hash = :h"), {"h": hash_key(key)})
        return str(found.scalar_one())


async def seed_accounts(engine: AsyncEngine, *pairs: tuple[str, str]) -> None:
    async with engine.begin() as conn:
        for pn, waba in pairs:
            await conn.execute(
                text(
                    "INSERT INTO phone_numbers (phone_number_id, waba_id) VALUES (:p, :w) ON CONFLICT DO NOTHING"
                ),
                {"p": pn, "w": waba},
            )


async def seed_message(engine: AsyncEngine, api_key_id: str, pn: str = PN, amount: str = "0.05") -> str:
    """A send that left, from `pn` by that key, this month (so the costs report counts it)."""
    message_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, type, "
                "body, status, graph_message_id, created_at, pricing_category, market, billable, "
                "estimated_amount, currency) VALUES (:id, :key, 'x', :pn, :to, 'template', '{}', 'sent', "
                ":wamid, :at, 'marketing', 'Brazil', true, CAST(:amount AS numeric), 'USD')"
            ),
            {
                "id": message_id,
                "key": api_key_id,
                "pn": pn,
                "to": CUSTOMER,
                "wamid": f"wamid.{uuid.uuid4().hex}",
                "at": datetime.now(UTC),
                "amount": amount,
            },
        )
    return message_id


async def seed_budget(engine: AsyncEngine, scope: str, scope_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO budgets (scope, scope_id, monthly_limit, currency) VALUES (:s, :i, 1000, 'USD') "
                "ON CONFLICT (scope, scope_id) DO NOTHING"
            ),
            {"s": scope, "i": scope_id},
        )


async def seed_subscription(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO subscriptions (id, url, events, phone_number_ids, secret) VALUES "
                "(:id, 'http://127.0.0.1:9/x', ARRAY['window.opened'], ARRAY[:pn], 'whsec_x') ON CONFLICT DO NOTHING"
            ),
            {"id": SUB_ID, "pn": PN},
        )
        await conn.execute(
            text(
                "INSERT INTO relay_deliveries (id, subscription_id, event_id, event_type, body, state) VALUES "
                "(:d, :id, gen_random_uuid(), 'window.opened', '\\x7b7d', 'dead') ON CONFLICT DO NOTHING"
            ),
            {"id": SUB_ID, "d": SUB_DELIVERY},
        )


async def unrevoke(engine: AsyncEngine, api_key_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE api_keys SET revoked_at = NULL WHERE id = :id"), {"id": api_key_id})


async def budgets_in_db(engine: AsyncEngine) -> set[tuple[str, str]]:
    async with engine.connect() as conn:
        return {
            (r.scope, r.scope_id) for r in await conn.execute(text("SELECT scope, scope_id FROM budgets"))
        }


# What a refused request must leave as it was: every table of the models, each row as text (a key's
# last_used_at aside: using a key, even for a refused request, is use).
SNAPSHOT = text(
    " UNION ALL ".join(
        f"SELECT '{table}' AS name, md5(COALESCE(string_agg(r::text, ',' ORDER BY r::text), '')) AS digest "
        f"FROM (SELECT {'id, name, key_hash, role, phone_number_ids, revoked_at' if table == 'api_keys' else '*'} "
        f"FROM {table}) r"
        for table in TABLES
    )
)


async def snapshot(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        return {r.name: r.digest for r in await conn.execute(SNAPSHOT)}


# --- the matrix ---------------------------------------------------------------------------------------------
def test_every_route_is_public_or_in_the_scope_table(settings: Settings) -> None:
    routes = set(served(create_app(settings)))
    assert routes - PUBLIC - SAMPLES.keys() == set(), "new routes: add them to SAMPLES (or PUBLIC)"
    assert (PUBLIC | SAMPLES.keys()) - routes == set(), "SAMPLES or PUBLIC name routes the app lacks"


def test_a_read_key_can_change_nothing() -> None:
    """Every route that writes or sends needs more than `read` (the matrix then proves a read key is
    refused there with nothing written and nothing sent); the one POST a read key may call only reads."""
    reads_by_post = {("POST", "/v1/windows/check")}
    for (method, path), samples in SAMPLES.items():
        if method != "GET" and (method, path) not in reads_by_post:
            assert all(RANK[s.role] > RANK[Role.READ] for s in samples), f"{method} {path}"
    assert all(s.role is Role.READ for route in reads_by_post for s in SAMPLES[route])


def refused(response: httpx.Response, status: int, code: str) -> None:
    """/v1 answers problem+json; /graph answers Meta's error shape (190: bad token, 10: no permission)."""
    if response.request.url.path.startswith("/graph/"):
        assert response.status_code == status, response.text
        meta_code = {401: 190, 403: 10}[status]
        assert response.json()["error"]["code"] == meta_code, response.text
        assert response.json()["error"]["window_gate"]["code"] == code, response.text
    else:
        assert_problem(response, status, code)


async def test_scope_matrix_every_route_times_every_key(
    client: httpx.AsyncClient, engine: AsyncEngine, meta: Meta
) -> None:
    """Every route × {no key, bad key, read, send, admin × unlimited, limited to the number the request
    touches, limited to another number}: 401 without a valid key, 403 for a role too low or another
    number (404 for a message, a listing without the number's objects), never 401/403 (nor 5xx) else.
    Every refusal writes nothing (every table compared before and after) and sends nothing to Meta."""
    keys = {
        (role, limit): await make_key(engine, role, limit) for role in Role for limit in ((), (PN,), (OTHER,))
    }
    pn_key_id = await key_of(engine, keys[Role.SEND, (PN,)])
    await seed_accounts(engine, (PN, WABA), (OTHER, OTHER_WABA))
    spare_key_id = await key_of(engine, await make_key(engine, Role.READ, (PN,)))
    world = World(await seed_message(engine, pn_key_id), pn_key_id, spare_key_id)
    cells = refusals = 0
    for (method, _), samples in SAMPLES.items():
        for sample in samples:
            who: list[tuple[str, dict[str, str], Role | None, tuple[str, ...]]] = [
                ("no key", {}, None, ()),
                ("bad key", bearer("wg_" + "x" * 43), None, ()),
                *((f"{r.value} {lim}", bearer(k), r, lim) for (r, lim), k in keys.items()),
            ]
            for label, headers, role, limit in who:
                await seed_budget(engine, "phone_number", PN)
                await seed_budget(engine, "api_key", pn_key_id)
                await seed_subscription(engine)
                await seed_accounts(engine, (PN, WABA))  # DELETE /v1/phone-numbers/{PN} forgets it
                await unrevoke(engine, spare_key_id)
                before, reached = await snapshot(engine), len(meta.requests)
                r = await client.request(
                    method,
                    sample.url(world),
                    json=sample.json,
                    params=sample.params,
                    headers={"Idempotency-Key": str(uuid.uuid4()), **headers},
                )
                cells += 1
                where = f"{method} {r.request.url} as {label}: {r.status_code} {r.text[:300]}"
                if role is None:
                    refused(r, 401, "unauthorized")
                elif RANK[role] < RANK[sample.role]:
                    refused(r, 403, "forbidden")
                elif limit == (OTHER,) and sample.other == 404:
                    assert_problem(r, 404, "not_found")
                elif limit == (OTHER,) and sample.other == FILTERED:
                    assert r.status_code == 200, where
                    assert PN not in r.text and pn_key_id not in r.text, where
                elif limit == (OTHER,):
                    refused(r, 403, "forbidden")
                else:
                    assert r.status_code not in (401, 403) and r.status_code < 500, where
                    continue
                # Refused (or a listing without the number's objects): nothing written, nothing sent.
                assert await snapshot(engine) == before, where
                assert len(meta.requests) == reached, where
                refusals += 1
    routes = sum(len(s) for s in SAMPLES.values())
    print(
        f"\nscope matrix: {cells} cells ({routes} route samples × {len(keys) + 2} callers), "
        f"{refusals} refused with nothing written and nothing sent to Meta"
    )
    assert cells == routes * 11


def test_a_route_that_declares_no_access_is_found(settings: Settings) -> None:
    """create_app refuses to start with such a route; this is the check it runs."""
    from window_gate.apikey.access import Reader, undeclared

    app = create_app(settings)
    assert undeclared(app.routes) == []
    forgot = APIRouter(prefix="/v1/forgot")

    @forgot.get("/{phone_number_id}")
    async def leak(phone_number_id: str) -> dict[str, str]:
        return {"phone_number_id": phone_number_id}

    @forgot.get("/declared/{phone_number_id}")
    async def fine(phone_number_id: str, caller: Reader) -> dict[str, str]:
        return {"phone_number_id": phone_number_id}

    app.include_router(forgot)
    assert undeclared(app.routes) == ["GET /v1/forgot/{phone_number_id}"]


def test_the_app_refuses_to_start_with_a_route_that_declares_no_access(settings: Settings) -> None:
    async def leak(phone_number_id: str) -> dict[str, str]:
        return {"phone_number_id": phone_number_id}

    consent_router.add_api_route("/forgot/{phone_number_id}", leak, methods=["GET"])
    try:
        with pytest.raises(RuntimeError, match=r"GET /v1/opt-outs/forgot/\{phone_number_id\}"):
            create_app(settings)
    finally:
        consent_router.routes.pop()
    create_app(settings)


# --- the attacks --------------------------------------------------------------------------------------------
async def test_limited_admin_cannot_set_or_remove_another_numbers_budget(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    admin_a = bearer(await make_key(engine, Role.ADMIN, (PN,)))
    await seed_budget(engine, "phone_number", OTHER)
    r = await client.put(
        f"/v1/budgets/phone_number/{OTHER}", json={**BUDGET, "monthly_limit": "0"}, headers=admin_a
    )
    assert_problem(r, 403, "forbidden")
    assert_problem(
        await client.delete(f"/v1/budgets/phone_number/{OTHER}", headers=admin_a), 403, "forbidden"
    )
    async with engine.connect() as conn:
        limit = await conn.execute(
            text("SELECT monthly_limit FROM budgets WHERE scope_id = :i"), {"i": OTHER}
        )
        assert limit.scalar_one() == 1000  # untouched
    assert (
        await client.put(f"/v1/budgets/phone_number/{PN}", json=BUDGET, headers=admin_a)
    ).status_code == 200
    assert (await client.delete(f"/v1/budgets/phone_number/{PN}", headers=admin_a)).status_code == 204


async def test_limited_admin_budgets_only_keys_within_its_numbers(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A limited admin may block only keys that cannot send from any number it does not have."""
    admin_a = await make_key(engine, Role.ADMIN, (PN,))
    mine = await key_of(engine, await make_key(engine, Role.SEND, (PN,)))
    theirs = await key_of(engine, await make_key(engine, Role.SEND, (OTHER,)))
    both = await key_of(engine, await make_key(engine, Role.SEND, (PN, OTHER)))
    unlimited = await key_of(engine, await make_key(engine, Role.SEND))
    for target in (theirs, both, unlimited, str(uuid.uuid4())):  # a missing key: 403 too, not 404
        r = await client.put(f"/v1/budgets/api_key/{target}", json=BUDGET, headers=bearer(admin_a))
        assert_problem(r, 403, "forbidden")
    assert await budgets_in_db(engine) == set()
    for target in (mine, await key_of(engine, admin_a)):  # its own key is within its reach
        r = await client.put(f"/v1/budgets/api_key/{target}", json=BUDGET, headers=bearer(admin_a))
        assert r.status_code == 200, r.text
    await seed_budget(engine, "api_key", theirs)
    assert_problem(
        await client.delete(f"/v1/budgets/api_key/{theirs}", headers=bearer(admin_a)), 403, "forbidden"
    )
    assert ("api_key", theirs) in await budgets_in_db(engine)
    # An unlimited admin reaches every key; a missing one is simply not found.
    root = bearer(await make_key(engine, Role.ADMIN))
    assert (
        await client.put(f"/v1/budgets/api_key/{unlimited}", json=BUDGET, headers=root)
    ).status_code == 200
    assert_problem(
        await client.put(f"/v1/budgets/api_key/{uuid.uuid4()}", json=BUDGET, headers=root), 404, "not_found"
    )


async def test_limited_admin_lists_only_the_budgets_it_could_set(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    admin_a = await make_key(engine, Role.ADMIN, (PN,))
    mine = await key_of(engine, await make_key(engine, Role.SEND, (PN,)))
    theirs = await key_of(engine, await make_key(engine, Role.SEND, (OTHER,)))
    unlimited = await key_of(engine, await make_key(engine, Role.SEND))
    for scope, scope_id in (
        ("phone_number", PN),
        ("phone_number", OTHER),
        ("api_key", mine),
        ("api_key", theirs),
        ("api_key", unlimited),
    ):
        await seed_budget(engine, scope, scope_id)
    listed = (await client.get("/v1/budgets", headers=bearer(admin_a))).json()["budgets"]
    assert {(b["scope"], b["scope_id"]) for b in listed} == {("phone_number", PN), ("api_key", mine)}
    everything = (await client.get("/v1/budgets", headers=bearer(await make_key(engine)))).json()["budgets"]
    assert len(everything) == 5


async def test_limited_admin_cannot_sync_another_numbers_account(
    client: httpx.AsyncClient, engine: AsyncEngine, meta: Meta
) -> None:
    await seed_accounts(engine, (PN, WABA), (OTHER, OTHER_WABA))
    admin_a = bearer(await make_key(engine, Role.ADMIN, (PN,)))
    for asked in ([OTHER_WABA], [WABA, OTHER_WABA], ["123456789"]):  # unknown: not provably its own
        r = await client.post("/v1/templates/sync", json={"waba_ids": asked}, headers=admin_a)
        assert_problem(r, 403, "forbidden")
    assert meta.requests == []  # nothing reached Meta
    r = await client.post("/v1/templates/sync", headers=admin_a)  # by default: its own account only
    assert r.status_code == 200 and [a["waba_id"] for a in r.json()["accounts"]] == [WABA], r.text
    assert [OTHER_WABA in q["url"] for q in meta.requests] == [False]
    r = await client.post("/v1/templates/sync", headers=bearer(await make_key(engine)))  # unlimited: all
    assert {a["waba_id"] for a in r.json()["accounts"]} >= {WABA, OTHER_WABA}, r.text


async def test_costs_by_key_name_only_keys_within_the_callers_numbers(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A key limited to PN sees PN's sends only; by key, itself and the keys limited to its numbers by
    id and name, every other key's sends on PN together as `other_keys`, unnamed."""
    reader = await make_key(engine, Role.READ, (PN,))
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET name = 'secret-unlimited' WHERE phone_number_ids = '{}'")
        )
    sibling = await key_of(engine, await make_key(engine, Role.SEND, (PN,)))
    wide = await key_of(engine, await make_key(engine, Role.SEND, (PN, OTHER)))
    unlimited = await key_of(engine, await make_key(engine, Role.SEND))
    async with engine.begin() as conn:
        for key_id, name in ((wide, "secret-wide"), (unlimited, "secret-unlimited")):
            await conn.execute(
                text("UPDATE api_keys SET name = :n WHERE id = CAST(:i AS uuid)"), {"n": name, "i": key_id}
            )
    for key_id in (sibling, wide, unlimited):
        await seed_message(engine, key_id, PN, "0.05")
    await seed_message(engine, wide, OTHER, "0.70")  # another number: never counted for this reader
    r = await client.get("/v1/costs", params={"group_by": "api_key"}, headers=bearer(reader))
    assert r.status_code == 200, r.text
    assert "secret" not in r.text and wide not in r.text and unlimited not in r.text
    groups = {g["key"]: g for g in r.json()["groups"]}
    assert set(groups) == {sibling, "other_keys"}
    assert groups[sibling]["label"] == "test-send" and groups[sibling]["messages"] == 1
    assert groups["other_keys"]["label"] is None and groups["other_keys"]["messages"] == 2
    assert r.json()["totals"]["messages"] == 3 and r.json()["totals"]["estimated_amount"] == "0.150000"
    # An unlimited key sees every key by name.
    everyone = await client.get(
        "/v1/costs", params={"group_by": "api_key"}, headers=bearer(await make_key(engine))
    )
    assert {g["label"] for g in everyone.json()["groups"]} == {"test-send", "secret-wide", "secret-unlimited"}


async def test_a_message_of_another_number_is_not_found(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """By number, not by key: any key of PN reads PN's sends; a key of another number gets exactly the
    answer a missing id gets."""
    sender = await key_of(engine, await make_key(engine, Role.SEND, (PN,)))
    message_id = await seed_message(engine, sender)
    colleague = bearer(await make_key(engine, Role.READ, (PN,)))
    assert (await client.get(f"/v1/messages/{message_id}", headers=colleague)).status_code == 200
    stranger = bearer(await make_key(engine, Role.ADMIN, (OTHER,)))
    found = assert_problem(await client.get(f"/v1/messages/{message_id}", headers=stranger), 404, "not_found")
    missing_id = uuid.uuid4()
    missing = assert_problem(
        await client.get(f"/v1/messages/{missing_id}", headers=stranger), 404, "not_found"
    )
    assert found["detail"] == str(missing["detail"]).replace(str(missing_id), message_id)


async def test_graph_pass_through_refuses_another_number_in_metas_shape(
    client: httpx.AsyncClient, engine: AsyncEngine, meta: Meta
) -> None:
    sender_a = bearer(await make_key(engine, Role.SEND, (PN,)))
    r = await client.post(f"/graph/v25.0/{OTHER}/messages", json=GRAPH_BODY, headers=sender_a)
    refused(r, 403, "forbidden")
    reader = bearer(await make_key(engine, Role.READ))
    refused(
        await client.post(f"/graph/v25.0/{PN}/messages", json=GRAPH_BODY, headers=reader), 403, "forbidden"
    )
    assert meta.requests == []
    assert (
        await client.post(f"/graph/v25.0/{PN}/messages", json=GRAPH_BODY, headers=sender_a)
    ).status_code == 200
