"""When the database cannot be reached the gate starts anyway, stays alive, and refuses to guess (503)."""

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import assert_problem
from tests.factories import PN, delivery, inbound, signed
from window_gate.app import create_app
from window_gate.config import load_settings
from window_gate.sandbox import in_process

UNREACHABLE = {
    "nothing-listening": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
    "no-such-database": "postgresql+asyncpg://postgres@127.0.0.1:5432/window_gate_no_such_db",
    "no-such-role": "postgresql+asyncpg://window_gate_no_such_role@127.0.0.1:5432/postgres",
}


@pytest.fixture(params=list(UNREACHABLE.values()), ids=list(UNREACHABLE))
async def dead_db_client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    # Starting at all proves the lifespan does not connect.
    settings = load_settings(database_url=request.param, sandbox=True, api_key_cache_seconds=0)
    app = create_app(settings, in_process)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate", timeout=10) as client:
            yield client


async def test_liveness_does_not_depend_on_the_database(dead_db_client: httpx.AsyncClient) -> None:
    r = await dead_db_client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_readiness_fails_without_the_database(dead_db_client: httpx.AsyncClient) -> None:
    assert_problem(await dead_db_client.get("/readyz"), 503, "database_unavailable")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_window_questions_fail_closed_with_503_never_401_or_a_guess(
    dead_db_client: httpx.AsyncClient, method: str
) -> None:
    # The key lookup is the first thing that needs the database: it must not read as "bad key".
    headers = {"Authorization": "Bearer wg_any-key-at-all"}
    if method == "GET":
        r = await dead_db_client.get(f"/v1/windows/{PN}/5511987654321", headers=headers)
    else:
        body = {"phone_number_id": PN, "customers": ["5511987654321"]}
        r = await dead_db_client.post("/v1/windows/check", json=body, headers=headers)
    problem = assert_problem(r, 503, "database_unavailable")
    assert "state" not in problem and "windows" not in problem
    assert r.headers["retry-after"] == "1"


async def test_missing_key_is_still_401_without_the_database(dead_db_client: httpx.AsyncClient) -> None:
    # Refusing a request with no credentials needs no database.
    assert_problem(await dead_db_client.get(f"/v1/windows/{PN}/5511987654321"), 401, "unauthorized")


async def test_signed_webhook_is_not_acknowledged_without_the_database(
    dead_db_client: httpx.AsyncClient,
) -> None:
    # A 2xx here would make Meta drop a delivery that was never stored; a 503 makes it retry.
    body, headers = signed(delivery([inbound("5511987654321")]))
    r = await dead_db_client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert_problem(r, 503, "database_unavailable")
