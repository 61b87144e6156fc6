"""A scripted Graph API (for httpx.MockTransport), the same on a real socket (SocketMeta: the faults only a
socket has), and helpers for sending tests."""

import asyncio
import contextlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from tests.conftest import free_port
from tests.factories import PN, delivery, inbound, signed

WA = "551187654321"  # Meta's wa_id for "+55 11 98765-4321" (no ninth digit)
Handler = Callable[[httpx.Request], httpx.Response]
Gated = tuple[httpx.AsyncClient, AsyncEngine]
OPAQUE = re.compile(r"^wg:(.+)$")  # biz_opaque_callback_data: the gate's message id


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


@dataclass(frozen=True)
class Act:
    """How SocketMeta treats one request, once it has read it whole (`reset_early`: its head only).

    answer: `status` with `body` (None: Meta's send answer) · silent: nothing, the socket held open ·
    reset: an RST (SO_LINGER 0) instead of an answer · reset_early: an RST before the body is read ·
    close: a clean FIN without an answer · cut: the answer's head and half its body, then an RST."""

    kind: str = "answer"
    status: int = 200
    body: bytes | None = None
    delay: float = 0.0


class SocketMeta:
    """Meta's Graph API as an HTTP/1.1 keep-alive server on 127.0.0.1, acting on each request as `plan`
    says (decided as its head arrives); `down()` stops listening (connections refused) and hangs up, `up()` listens on the same port."""

    def __init__(self) -> None:
        self.plan: Callable[[int], Act] = lambda _: Act()  # by the request's number, from 1
        self.heads = 0  # requests whose head arrived
        self.requests: list[dict[str, Any]] = []  # bodies that arrived whole
        self.ids = itertools.count(1)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.open: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self.server = await asyncio.start_server(
            self.handle, "127.0.0.1", self.port, family=socket.AF_INET, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.open):
            writer.close()
        await asyncio.gather(*self.open.values(), return_exceptions=True)

    def accepted(self, body: dict[str, Any]) -> bytes:
        return json.dumps(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body.get("to"), "wa_id": WA}],
                "messages": [{"id": f"wamid.S{next(self.ids)}", "message_status": "accepted"}],
            }
        ).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.open[writer] = task
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads += 1
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                act = self.plan(self.heads)
                if act.kind == "reset_early":
                    return _reset(writer)
                raw = await reader.readexactly(int(length[1]) if length else 0)
                body = json.loads(raw or b"{}")
                self.requests.append(body)
                await asyncio.sleep(act.delay)
                if act.kind == "silent":
                    await reader.read()  # until the gate gives up and hangs up
                    return
                if act.kind == "reset":
                    return _reset(writer)
                if act.kind == "close":
                    return
                answer = self.accepted(body) if act.body is None else act.body
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n" % act.status)
                writer.write(b"Content-Length: %d\r\n\r\n" % len(answer))
                if act.kind == "cut":
                    writer.write(answer[: len(answer) // 2])
                    await writer.drain()
                    return _reset(writer)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gate hung up
        finally:
            writer.close()
            self.open.pop(writer, None)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, as a crashed server or a middlebox does: linger on, for zero seconds."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


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


class CountingMeta:
    """Meta's Graph API as a server of its own: uvicorn on a free port in a thread of its own. It keeps
    every send it gets, as it arrives (before answering), and accepts each `delay` seconds later."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.port = free_port()
        self.sends: list[dict[str, Any]] = []
        self.ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def texts(self, to: str | None = None) -> list[str]:
        """The gate's message ids of the free-form sends, in the order they arrived."""
        return [
            OPAQUE.match(s["biz_opaque_callback_data"]).group(1)  # type: ignore[union-attr]
            for s in list(self.sends)
            if s.get("type") == "text" and (to is None or s["to"] == to)
        ]

    def templates(self) -> Counter[str]:
        """Templates sent, by recipient."""
        return Counter(s["to"] for s in list(self.sends) if s.get("type") == "template")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] != "POST" or not scope["path"].endswith("/messages"):
            await _answer(send, 404, {"error": {"code": 100, "message": "not modelled here"}})
            return
        body = json.loads(raw)
        self.sends.append(body)  # one thread (the server's loop) appends: the list's order is arrival's
        await asyncio.sleep(self.delay)
        wamid = f"wamid.COUNTED{next(self.ids)}"
        await _answer(
            send,
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            },
        )


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@contextlib.contextmanager
def counting_meta(delay: float) -> Iterator[CountingMeta]:
    meta = CountingMeta(delay)
    server = uvicorn.Server(
        uvicorn.Config(
            meta,
            port=meta.port,
            log_config=None,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(
        target=server.run, name="counting-meta"
    )  # no signal handlers off the main thread
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the counting Meta did not start"
            time.sleep(0.01)
        yield meta
    finally:
        server.should_exit = True
        thread.join(10)
