"""The Graph client names what went wrong, over real sockets where a socket is what fails."""

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import free_port
from window_gate.errors import GraphError, GraphNoAnswer, GraphUnreachable, GraphUnreadable
from window_gate.graph.client import GraphClient

BODY = {"messaging_product": "whatsapp", "to": "5511987654321", "type": "text", "text": {"body": "hi"}}


def client(base_url: str, transport: httpx.AsyncBaseTransport | None = None) -> GraphClient:
    http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(0.3), transport=transport)
    return GraphClient(http, "v25.0", None)


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """A server that takes the request and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0, family=socket.AF_INET)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"
        for writer in held:
            writer.close()


async def test_nobody_listening_is_unreachable() -> None:
    graph = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(GraphUnreachable):
        await graph.send_message("1", BODY)
    await graph.http.aclose()


async def test_a_request_left_unanswered_is_no_answer(silent: str) -> None:
    graph = client(silent)
    with pytest.raises(GraphNoAnswer, match="ReadTimeout"):
        await graph.send_message("1", BODY)
    await graph.http.aclose()


async def test_an_answer_that_is_not_json_is_unreadable() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text="<html>maintenance</html>"))
    graph = client("http://graph", transport)
    with pytest.raises(GraphUnreadable):
        await graph.send_message("1", BODY)


async def test_meta_error_object_is_parsed() -> None:
    error = {
        "message": "(#131047) Re-engagement message",
        "type": "OAuthException",
        "code": 131047,
        "error_subcode": 2494010,
        "error_data": {"messaging_product": "whatsapp", "details": "more than 24 hours"},
        "fbtrace_id": "Az",
    }
    transport = httpx.MockTransport(lambda _: httpx.Response(400, json={"error": error}))
    with pytest.raises(GraphError) as caught:
        await client("http://graph", transport).send_message("1", BODY)
    err = caught.value
    assert (err.http_status, err.code, err.subcode, err.fbtrace_id) == (400, 131047, 2494010, "Az")
    assert err.details == "more than 24 hours" and err.raw == {"error": error}
