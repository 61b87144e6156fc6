"""The rest of Meta's Graph API through the gate, against the simulator: media up, looked up, down and
deleted; an account's templates with Meta's paging; every call with the number's token, the gate's key
never reaching Meta, and refusals in Meta's shape."""

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import bearer, make_key, sealed
from tests.factories import PN, WABA
from window_gate.apikey.rules import Role
from window_gate.sandbox import SimulatorConfig, create_simulator, simulator_state

OTHER = "999000111222333"  # another business number of the same account
PN_TOKEN = "EAAG-number-own-token-0123456789"  # PN's own token (phone_numbers.access_token_encrypted)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n"


class Recorded(httpx.AsyncBaseTransport):
    """The simulator as Meta, keeping every request that reached it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    def never_saw(self, *secrets: str) -> None:
        for request in self.requests:
            seen = [str(request.url), *(f"{k}: {v}" for k, v in request.headers.multi_items())]
            for secret in secrets:
                assert not any(secret in s for s in seen), f"{secret[:6]}… reached Meta: {request.url}"


@pytest.fixture
def simulator() -> FastAPI:
    return create_simulator(SimulatorConfig())


@pytest.fixture
def upstream(simulator: FastAPI) -> Recorded:
    return Recorded(httpx.ASGITransport(app=simulator))


@pytest.fixture
async def numbers(engine: AsyncEngine) -> None:
    """PN with its own token, OTHER without, both of the simulator's account."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO phone_numbers (phone_number_id, waba_id, access_token_encrypted) "
                "VALUES (:pn, :waba, :token), (:other, :waba, NULL)"
            ),
            {"pn": PN, "other": OTHER, "waba": WABA, "token": sealed(PN_TOKEN)},
        )


async def upload(client: httpx.AsyncClient, key: str, pn: str = PN) -> httpx.Response:
    files = {"file": ("logo.png", PNG, "image/png")}
    data = {"messaging_product": "whatsapp", "type": "image/png"}
    return await client.post(f"/graph/v25.0/{pn}/media", files=files, data=data, headers=bearer(key))


def meta_error(r: httpx.Response, status: int, code: int, gate_code: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"].startswith(f"(#{code})"), error
    if gate_code is not None:
        assert error["window_gate"]["code"] == gate_code, error


async def test_media_goes_up_comes_down_and_is_deleted_through_the_gate_with_the_numbers_token(
    client: httpx.AsyncClient, engine: AsyncEngine, numbers: None, upstream: Recorded
) -> None:
    key = await make_key(engine, Role.SEND, (PN,))
    uploaded = await upload(client, key)
    assert uploaded.status_code == 200, uploaded.text
    media_id = uploaded.json()["id"]

    # The media's url is the gate's own link (Meta's needs Meta's token); the key's one number is implied.
    info = await client.get(f"/graph/v25.0/{media_id}", headers=bearer(key))
    assert info.status_code == 200, info.text
    assert info.json()["mime_type"] == "image/png" and info.json()["file_size"] == len(PNG)
    link = urlsplit(info.json()["url"])
    assert (link.scheme, link.netloc, link.path) == ("http", "gate", f"/graph/media/{media_id}")
    assert parse_qs(link.query) == {"phone_number_id": [PN]}

    downloaded = await client.get(f"{link.path}?{link.query}", headers=bearer(key))
    assert downloaded.status_code == 200, downloaded.text
    assert downloaded.content == PNG and downloaded.headers["content-type"] == "image/png"

    deleted = await client.delete(f"/graph/v25.0/{media_id}", headers=bearer(key))
    assert (deleted.status_code, deleted.json()) == (200, {"success": True})
    meta_error(await client.get(f"/graph/v25.0/{media_id}", headers=bearer(key)), 400, 100)

    assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {PN_TOKEN}"}
    lookups = [r for r in upstream.requests if r.url.path.endswith(f"/{media_id}")]
    assert len(lookups) == 5 and all(r.url.params["phone_number_id"] == PN for r in lookups)
    upstream.never_saw(key)


async def test_the_gate_key_in_the_query_never_reaches_meta_nor_does_metas_token_come_back(
    client: httpx.AsyncClient, engine: AsyncEngine, numbers: None, upstream: Recorded
) -> None:
    """Chatwoot sends its token as `access_token` and follows `paging.next` as Meta wrote it, whose link
    carries Meta's token: the gate points it at itself, with the caller's key, and no Meta token."""
    key = await make_key(engine, Role.READ, (PN,))
    url = f"/graph/v25.0/{WABA}/message_templates"
    first = await client.get(url, params={"limit": "2", "access_token": key})
    assert first.status_code == 200, first.text
    assert len(first.json()["data"]) == 2 and PN_TOKEN not in first.text
    following = urlsplit(first.json()["paging"]["next"])
    assert (following.netloc, following.path) == ("gate", url)
    assert parse_qs(following.query)["access_token"] == [key]
    second = await client.get(f"{following.path}?{following.query}")
    assert second.status_code == 200 and second.json()["data"], second.text
    assert {d["name"] for d in first.json()["data"]}.isdisjoint(d["name"] for d in second.json()["data"])
    assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {PN_TOKEN}"}
    upstream.never_saw(key)


async def test_the_numbers_fields_with_its_token(
    client: httpx.AsyncClient, engine: AsyncEngine, numbers: None, upstream: Recorded
) -> None:
    r = await client.get(f"/graph/v25.0/{PN}", headers=bearer(await make_key(engine, Role.READ, (PN,))))
    assert r.status_code == 200 and r.json()["id"] == PN, r.text
    assert upstream.requests[0].headers["authorization"] == f"Bearer {PN_TOKEN}"


async def test_a_key_of_another_number_is_refused_in_metas_shape_before_meta(
    client: httpx.AsyncClient, engine: AsyncEngine, numbers: None, upstream: Recorded, simulator: FastAPI
) -> None:
    media_id = (await upload(client, await make_key(engine, Role.SEND, (PN,)))).json()["id"]
    before = len(upstream.requests)
    stranger = bearer(await make_key(engine, Role.ADMIN, ("555000111222333",)))
    for method, url in (
        ("POST", f"/graph/v25.0/{PN}/media"),
        ("GET", f"/graph/v25.0/{PN}"),
        ("GET", f"/graph/v25.0/{media_id}?phone_number_id={PN}"),
        ("DELETE", f"/graph/v25.0/{media_id}?phone_number_id={PN}"),
        ("GET", f"/graph/media/{media_id}?phone_number_id={PN}"),
        ("GET", f"/graph/v25.0/{WABA}/message_templates"),
        ("POST", f"/graph/v25.0/{media_id}"),
    ):
        meta_error(await client.request(method, url, headers=stranger), 403, 10, "forbidden")
    assert len(upstream.requests) == before
    # Its own number implied, Meta itself refuses another number's media: nothing of it comes back.
    meta_error(await client.get(f"/graph/v25.0/{media_id}", headers=stranger), 400, 100)
    assert len(simulator_state(simulator).media) == 1


async def test_a_limited_key_gets_media_objects_only(
    client: httpx.AsyncClient, engine: AsyncEngine, numbers: None
) -> None:
    """An id that is not the key's number could be any object of the account: only media pass."""
    key = bearer(await make_key(engine, Role.ADMIN, (PN,)))
    unknown_number = "444000111222333"  # the simulator answers a phone number's fields for it
    meta_error(await client.get(f"/graph/v25.0/{unknown_number}", headers=key), 403, 10, "forbidden")
    meta_error(await client.delete(f"/graph/v25.0/{unknown_number}", headers=key), 403, 10, "forbidden")
    several = bearer(await make_key(engine, Role.ADMIN, (PN, OTHER)))
    r = await client.get("/graph/v25.0/1037543291543636", headers=several)
    meta_error(r, 403, 10, "forbidden")
    assert "phone_number_id" in r.json()["error"]["error_data"]["details"]


@pytest.mark.parametrize(
    ("role", "method", "url"),
    [
        (Role.READ, "POST", f"/graph/v25.0/{PN}/media"),  # uploading needs send
        (Role.SEND, "POST", f"/graph/v25.0/{WABA}/message_templates"),  # template management: admin
        (Role.SEND, "DELETE", f"/graph/v25.0/{WABA}/message_templates?name=hello_world"),
        (Role.SEND, "POST", f"/graph/v25.0/{PN}/whatsapp_business_profile"),
        (Role.ADMIN, "POST", f"/graph/v25.0/{PN}/marketing_messages"),  # a send the gate would not check
    ],
)
async def test_what_a_role_may_not_do_is_refused_before_meta(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    numbers: None,
    upstream: Recorded,
    role: Role,
    method: str,
    url: str,
) -> None:
    r = await client.request(method, url, headers=bearer(await make_key(engine, role)), json={})
    meta_error(r, 403, 10, "forbidden")
    assert upstream.requests == []


async def test_an_unknown_key_gets_metas_invalid_token_error(
    client: httpx.AsyncClient, upstream: Recorded
) -> None:
    r = await client.get(f"/graph/v25.0/{PN}", headers=bearer("wg_" + "x" * 43))
    meta_error(r, 401, 190, "unauthorized")
    meta_error(await client.get(f"/graph/v25.0/{PN}"), 401, 190, "unauthorized")
    assert upstream.requests == []


async def test_an_upload_over_the_limit_is_refused_in_metas_shape(
    client: httpx.AsyncClient, engine: AsyncEngine, numbers: None, upstream: Recorded
) -> None:
    key = await make_key(engine, Role.SEND, (PN,))
    too_big = {"content-length": str(200 * 1024 * 1024), "content-type": "application/octet-stream"}
    r = await client.post(f"/graph/v25.0/{PN}/media", headers={**bearer(key), **too_big}, content=b"x")
    meta_error(r, 413, 100, "payload_too_large")
    assert upstream.requests == []
