"""Phone numbers as admins set them up: the token encrypted at rest, used by sends, never shown or logged."""

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ENCRYPTION_KEY, assert_problem, bearer, make_key
from tests.factories import PN
from tests.test_logs import Lines, _capture
from tests.upstream import Gated, Meta, open_window, text_message
from window_gate.apikey.rules import Role
from window_gate.app import create_app
from window_gate.config import Settings
from window_gate.crypto import Sealer

TOKEN = "EAAG-the-numbers-own-token-0123456789"
TEMPLATE = {"name": "reconnect", "language": {"code": "pt_BR"}}
FULL = {
    "waba_id": "102290129340398",
    "access_token": TOKEN,
    "display_phone_number": "15550001111",
    "throughput_per_second": 250,
    "default_reengagement_template": TEMPLATE,
    "time_zone": "America/Sao_Paulo",
}


@pytest.fixture
def debug_lines(settings: Settings) -> Iterator[Lines]:
    yield from _capture(settings, "debug")


async def stored(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text("SELECT * FROM phone_numbers ORDER BY 1"))]


async def test_a_registered_number_sends_with_its_token_which_is_never_shown_nor_logged(
    gate: Gated, meta: Meta, debug_lines: Lines
) -> None:
    client, engine = gate
    put = await client.put(f"/v1/phone-numbers/{PN}", json=FULL)
    assert put.status_code == 200, put.text
    shown = put.json()
    assert shown["has_access_token"] is True and shown["registered"] is True
    assert {k: shown[k] for k in FULL if k != "access_token"} == {
        k: v for k, v in FULL.items() if k != "access_token"
    }
    assert "access_token" not in shown
    # At rest: Fernet under ENCRYPTION_KEY, never the token.
    async with engine.connect() as conn:
        sealed = (
            await conn.execute(
                text("SELECT access_token_encrypted FROM phone_numbers WHERE phone_number_id = :p"), {"p": PN}
            )
        ).scalar_one()
    assert TOKEN not in sealed and Sealer([ENCRYPTION_KEY]).decrypt(sealed) == TOKEN
    assert TOKEN not in str(await stored(engine))

    await open_window(client)
    assert (await client.post("/v1/messages", json=text_message())).status_code == 201
    assert meta.tokens[-1] == f"Bearer {TOKEN}"

    listed = await client.get("/v1/phone-numbers")
    one = await client.get(f"/v1/phone-numbers/{PN}")
    assert listed.json()["phone_numbers"] == [one.json()] and one.json()["has_access_token"]
    answers = [put, listed, one]
    assert not any(TOKEN in r.text for r in answers)
    logged = debug_lines()
    assert len(logged) > 3 and all(TOKEN not in str(line) for line in logged)


async def test_fields_left_out_stay_null_clears_and_the_token_can_be_removed(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    assert (await client.put(f"/v1/phone-numbers/{PN}", json=FULL)).status_code == 200
    r = await client.put(f"/v1/phone-numbers/{PN}", json={"time_zone": "Europe/Lisbon", "access_token": None})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["time_zone"] == "Europe/Lisbon" and body["throughput_per_second"] == 250
    assert body["default_reengagement_template"] == TEMPLATE and body["has_access_token"] is False
    await open_window(client)
    assert (await client.post("/v1/messages", json=text_message())).status_code == 201
    assert meta.tokens[-1] == "Bearer sandbox"  # back to GRAPH_ACCESS_TOKEN


@pytest.mark.parametrize(
    "body",
    [
        {"time_zone": "Mars/Olympus_Mons"},
        {"time_zone": "../../etc/passwd"},
        {"default_reengagement_template": {"name": "reconnect"}},
        {"default_reengagement_template": {"language": {"code": "en"}}},
        {"default_reengagement_template": "reconnect"},
        {"throughput_per_second": 0},
        {"access_token": "short"},
        {"waba_id": "not-digits"},
        {"unknown_field": 1},
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(gate: Gated, body: dict[str, object]) -> None:
    client, engine = gate
    before = await stored(engine)
    assert_problem(await client.put(f"/v1/phone-numbers/{PN}", json=body), 422, "validation_error")
    assert await stored(engine) == before


async def test_without_encryption_key_a_token_is_refused_and_nothing_written(
    settings: Settings, upstream: httpx.AsyncBaseTransport, engine: AsyncEngine, debug_lines: Lines
) -> None:
    from asgi_lifespan import LifespanManager

    app = create_app(settings.model_copy(update={"encryption_key": None}), upstream)
    key = await make_key(engine)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://g") as c,
    ):
        r = await c.put(f"/v1/phone-numbers/{PN}", json={"access_token": TOKEN}, headers=bearer(key))
        assert_problem(r, 409, "encryption_not_configured")
        assert TOKEN not in r.text
        ok = await c.put(f"/v1/phone-numbers/{PN}", json={"time_zone": "UTC"}, headers=bearer(key))
        assert ok.status_code == 200 and ok.json()["has_access_token"] is False
    assert all(TOKEN not in str(line) for line in debug_lines())


async def test_a_limited_admin_may_not_move_its_number_to_another_account(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    limited = bearer(await make_key(engine, Role.ADMIN, (PN,)))
    r = await client.put(f"/v1/phone-numbers/{PN}", json={"waba_id": "777000111222333"}, headers=limited)
    assert_problem(r, 403, "forbidden")
    assert await stored(engine) == []
    fine = await client.put(f"/v1/phone-numbers/{PN}", json={"time_zone": "UTC"}, headers=limited)
    assert fine.status_code == 200


async def test_delete_forgets_the_number_and_its_token(gate: Gated) -> None:
    client, engine = gate
    assert (await client.put(f"/v1/phone-numbers/{PN}", json=FULL)).status_code == 200
    assert (await client.delete(f"/v1/phone-numbers/{PN}")).status_code == 204
    assert await stored(engine) == []
    assert_problem(await client.get(f"/v1/phone-numbers/{PN}"), 404, "not_found")
    assert_problem(await client.delete(f"/v1/phone-numbers/{PN}"), 404, "not_found")


async def test_rotation_old_key_still_decrypts_and_reencrypt_moves_to_the_first(engine: AsyncEngine) -> None:
    from cryptography.fernet import Fernet

    from window_gate.phonenumber import service

    new = Fernet.generate_key().decode()
    old_only, rotated = Sealer([ENCRYPTION_KEY]), Sealer([new, ENCRYPTION_KEY])
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO phone_numbers (phone_number_id, access_token_encrypted) VALUES (:p, :t)"),
            {"p": PN, "t": old_only.seal(TOKEN)},
        )
        assert await service.reencrypt(conn, rotated) == 1
        sealed = (await conn.execute(text("SELECT access_token_encrypted FROM phone_numbers"))).scalar_one()
    assert Sealer([new]).decrypt(sealed) == TOKEN


@pytest.mark.parametrize("token", ["short-tok", "EAAG" + "x" * 5000, 12345678901234567])
async def test_a_refused_token_is_not_echoed(gate: Gated, token: object, debug_lines: Lines) -> None:
    client, engine = gate
    r = await client.put(f"/v1/phone-numbers/{PN}", json={"access_token": token})
    assert_problem(r, 422, "validation_error")
    assert str(token)[:9] not in r.text and str(token)[:9] not in str(debug_lines())
    assert await stored(engine) == []
