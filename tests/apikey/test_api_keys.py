"""API keys through the API: shown once, listed without the key, revoked everywhere within
API_KEY_CACHE_SECONDS, and a limited admin confined to keys of its own numbers."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem, bearer, make_key
from tests.factories import PN
from window_gate.apikey.rules import Role
from window_gate.app import create_app
from window_gate.config import Settings

OTHER = "999000111222333"


async def keys_in_db(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [
            tuple(r)
            for r in await conn.execute(
                text(
                    "SELECT id, name, role, phone_number_ids, revoked_at FROM api_keys ORDER BY created_at, id"
                )
            )
        ]


async def test_a_key_is_shown_once_works_and_is_listed_with_its_last_use(
    gate_admin: httpx.AsyncClient,
) -> None:
    client = gate_admin
    r = await client.post("/v1/api-keys", json={"name": "crm", "role": "read", "phone_number_ids": [PN]})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["key"].startswith(created["key_prefix"]) and created["last_used_at"] is None
    assert (await client.get("/v1/templates", headers=bearer(created["key"]))).status_code == 200
    listed = (await client.get("/v1/api-keys")).json()["api_keys"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert mine["name"] == "crm" and mine["role"] == "read" and mine["phone_number_ids"] == [PN]
    assert mine["last_used_at"] is not None and "key" not in mine
    assert created["key"] not in (await client.get("/v1/api-keys")).text


async def test_last_use_is_stamped_at_most_once_a_minute(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    key = await make_key(engine, Role.READ)
    for _ in range(3):
        assert (await client.get("/v1/templates", headers=bearer(key))).status_code == 200
    async with engine.connect() as conn:
        stamps = (await conn.execute(text("SELECT last_used_at, xmin::text FROM api_keys"))).all()
    assert len(stamps) == 1 and stamps[0][0] is not None
    # One write: a second stamp would have made a new row version (xmin) after the first request's.
    assert (await client.get("/v1/templates", headers=bearer(key))).status_code == 200
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT last_used_at, xmin::text FROM api_keys"))).all() == stamps


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "root"},
        {"name": "", "role": "read"},
        {"role": "read"},
        {"name": "x", "role": "read", "phone_number_ids": []},
        {"name": "x", "role": "read", "extra": 1},
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, body: dict[str, object]
) -> None:
    admin = bearer(await make_key(engine))
    before = await keys_in_db(engine)
    assert_problem(await client.post("/v1/api-keys", json=body, headers=admin), 422, "validation_error")
    assert await keys_in_db(engine) == before


async def test_a_limited_admin_reaches_only_keys_of_its_numbers(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await make_key(engine, Role.READ)
    unlimited_id = (await keys_in_db(engine))[0][0]
    limited = bearer(await make_key(engine, Role.ADMIN, (PN,)))
    await make_key(engine, Role.READ, (PN, OTHER))
    before = await keys_in_db(engine)
    for body in (
        {"name": "x", "role": "send"},
        {"name": "x", "role": "send", "phone_number_ids": [OTHER]},
        {"name": "x", "role": "send", "phone_number_ids": [PN, OTHER]},
    ):
        assert_problem(await client.post("/v1/api-keys", json=body, headers=limited), 403, "forbidden")
    assert await keys_in_db(engine) == before
    listed = (await client.get("/v1/api-keys", headers=limited)).json()["api_keys"]
    assert [k["phone_number_ids"] for k in listed] == [[PN]]  # itself only
    assert_problem(await client.delete(f"/v1/api-keys/{unlimited_id}", headers=limited), 404, "not_found")
    assert await keys_in_db(engine) == before
    ok = await client.post(
        "/v1/api-keys", json={"name": "x", "role": "admin", "phone_number_ids": [PN]}, headers=limited
    )
    assert ok.status_code == 201


@pytest.fixture
async def gate_admin(client: httpx.AsyncClient, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    client.headers.update(bearer(await make_key(engine)))
    yield client


async def test_a_revoked_key_is_refused_on_every_replica_within_the_cache_time(
    settings: Settings, upstream: httpx.AsyncBaseTransport, engine: AsyncEngine
) -> None:
    """Two app instances (two replicas), each remembering keys for API_KEY_CACHE_SECONDS."""
    ttl = 0.5
    replica = settings.model_copy(update={"api_key_cache_seconds": ttl})
    admin = bearer(await make_key(engine))
    victim = await make_key(engine, Role.READ)
    a, b = create_app(replica, upstream), create_app(replica, upstream)
    async with LifespanManager(a) as ma, LifespanManager(b) as mb:
        ca = httpx.AsyncClient(transport=httpx.ASGITransport(app=ma.app), base_url="http://a")
        cb = httpx.AsyncClient(transport=httpx.ASGITransport(app=mb.app), base_url="http://b")
        async with ca, cb:
            assert (
                await cb.get("/v1/templates", headers=bearer(victim))
            ).status_code == 200  # b remembers it
            victim_id = next(
                k["id"]
                for k in (await ca.get("/v1/api-keys", headers=admin)).json()["api_keys"]
                if k["role"] == "read"
            )
            assert (await ca.delete(f"/v1/api-keys/{victim_id}", headers=admin)).status_code == 204
            assert_problem(await ca.get("/v1/templates", headers=bearer(victim)), 401, "unauthorized")
            await asyncio.sleep(ttl + 0.1)
            assert_problem(await cb.get("/v1/templates", headers=bearer(victim)), 401, "unauthorized")
            assert_problem(await ca.delete(f"/v1/api-keys/{victim_id}", headers=admin), 404, "not_found")
            listed = (await ca.get("/v1/api-keys", headers=admin)).json()["api_keys"]
            assert victim_id not in {k["id"] for k in listed}
