"""A scripted Graph API (for httpx.MockTransport) and helpers for sending tests."""

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PN, delivery, inbound, signed

WA = "551187654321"  # Meta's wa_id for "+55 11 98765-4321" (no ninth digit)
Handler = Callable[[httpx.Request], httpx.Response]
Gated = tuple[httpx.AsyncClient, AsyncEngine]


class Meta:
    """A scripted upstream that counts what reached it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.tokens: list[str] = []  # each request's Authorization header
        self.reply: Handler = self.accept
        self.delay = 0.0
        self.ids = itertools.count(1)
        self.wa_id = WA  # what Meta answers for any recipient

    def accept(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": body.get("to"), "wa_id": self.wa_id}],
                "messages": [{"id": f"wamid.T{next(self.ids)}", "message_status": "accepted"}],
            },
        )

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content or b"{}"))  # the pass-through's GETs have none
        self.tokens.append(request.headers.get("authorization", ""))
        await asyncio.sleep(self.delay)
        return self.reply(request)


def meta_error(code: int, message: str = "error", http_status: int = 400) -> Handler:
    def reply(_: httpx.Request) -> httpx.Response:
        error = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code, "fbtrace_id": "X"}
        return httpx.Response(http_status, json={"error": error})

    return reply


async def open_window(client: httpx.AsyncClient, wa_id: str = WA, ts: float | None = None) -> None:
    body, headers = signed(delivery([inbound(wa_id, ts=ts)]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200


def text_message(to: str = "+55 11 98765-4321", **extra: Any) -> dict[str, Any]:
    return {"phone_number_id": PN, "to": to, "type": "text", "text": {"body": "hello"}, **extra}


def template_message(to: str = "+55 11 98765-4321") -> dict[str, Any]:
    return {
        "phone_number_id": PN,
        "to": to,
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


@pytest.fixture
def meta() -> Meta:
    return Meta()


@pytest.fixture
def upstream(meta: Meta) -> httpx.AsyncBaseTransport:
    """Meta as the app fixtures see it."""
    return httpx.MockTransport(meta)


@pytest.fixture
async def gate(client: httpx.AsyncClient, admin_headers: dict[str, str], engine: AsyncEngine) -> Gated:
    """The app with an admin key set on its client."""
    client.headers.update(admin_headers)
    return client, engine
