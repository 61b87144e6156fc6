"""The Graph API's connection pool (graph/transport.py) against a real HTTP/1.1 server on a socket."""

import asyncio
import contextlib
import gzip
import os
import re
from collections.abc import AsyncIterator, Awaitable

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import empty
from tests.upstream import open_window, text_message
from window_gate.apikey import service as api_keys
from window_gate.apikey.rules import Role
from window_gate.app import _graph_pool, create_app
from window_gate.config import SANDBOX_APP_SECRET, load_settings
from window_gate.graph.transport import GraphTransport


class Upstream:
    """A keep-alive HTTP/1.1 server answering Meta's send shape after `delay`; it counts connections and
    the requests in flight at once, and hangs up after `close_after` requests on a connection."""

    def __init__(self, delay: float = 0.0, close_after: int | None = None) -> None:
        self.delay, self.close_after = delay, close_after
        self.connections = self.requests = self.in_flight = self.peak = 0
        self.url = ""
        self.open: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.open[writer] = task
        served = 0
        try:
            while self.close_after is None or served < self.close_after:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                self.requests += 1
                n = self.requests
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                await asyncio.sleep(self.delay)
                self.in_flight -= 1
                body = orjson.dumps(
                    {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": "x", "wa_id": "551187654321"}],
                        "messages": [{"id": f"wamid.U{n}"}],
                    }
                )
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            writer.close()
            self.open.pop(writer, None)

    async def stop(self) -> None:
        """Hang up on the clients still connected, and let their handlers end."""
        for writer in list(self.open):
            writer.close()
        await asyncio.gather(*self.open.values())


@pytest.fixture
def upstream_server() -> Upstream:
    return Upstream()


@pytest.fixture
async def serving(upstream_server: Upstream) -> AsyncIterator[Upstream]:
    server = await asyncio.start_server(upstream_server.handle, "127.0.0.1", 0)
    upstream_server.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield upstream_server
        await upstream_server.stop()


def client_of(transport: GraphTransport, upstream: Upstream, pool: float = 5) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url=upstream.url, timeout=httpx.Timeout(5, pool=pool))


async def test_requests_beyond_the_limit_wait_and_connections_are_reused(serving: Upstream) -> None:
    serving.delay = 0.02
    async with client_of(GraphTransport(4), serving) as http:
        answers = await asyncio.gather(*(http.post("/v25.0/1/messages", json={}) for _ in range(40)))
    assert [r.status_code for r in answers] == [200] * 40
    assert serving.requests == 40
    assert serving.peak == 4  # never more in flight than the limit, and the limit is used
    assert serving.connections == 4  # kept alive and reused, not one per request


async def test_a_burst_is_served_first_come_first_served_over_as_many_connections_as_the_limit(
    serving: Upstream,
) -> None:
    serving.delay = 0.01
    async with client_of(GraphTransport(50), serving) as http:
        answers = await asyncio.gather(*(http.post("/v25.0/1/messages", json={}) for _ in range(500)))
    assert [r.status_code for r in answers] == [200] * 500
    assert serving.peak == 50
    assert serving.connections == 50
    async with client_of(GraphTransport(1), serving) as http:
        answers = await asyncio.gather(*(http.post("/v25.0/1/messages", json={}) for _ in range(20)))
    # One at a time: the nth request asked is the nth served (the upstream numbers its answers).
    served = [int(r.json()["messages"][0]["id"].removeprefix("wamid.U")) for r in answers]
    assert served == sorted(served) == list(range(501, 521))


async def test_no_turn_within_the_pool_timeout_is_a_pool_timeout_and_nothing_is_sent(
    serving: Upstream,
) -> None:
    serving.delay = 0.5
    async with client_of(GraphTransport(1), serving, pool=0.05) as http:
        first = asyncio.create_task(http.post("/v25.0/1/messages", json={}))
        await asyncio.sleep(0.1)  # the first holds the only turn
        with pytest.raises(httpx.PoolTimeout):
            await http.post("/v25.0/1/messages", json={})
        assert (await first).status_code == 200
    assert serving.requests == 1


@pytest.mark.parametrize("upstream_server", [Upstream(close_after=1)])
async def test_a_connection_the_upstream_closed_is_not_reused(serving: Upstream) -> None:
    async with client_of(GraphTransport(1), serving) as http:
        for _ in range(3):
            assert (await http.post("/v25.0/1/messages", json={})).status_code == 200
            await asyncio.sleep(0.05)  # the server's hang-up reaches the idle connection
    assert serving.connections == 3


async def test_a_connection_idle_past_its_keepalive_is_not_reused(serving: Upstream) -> None:
    """Closed on our side before the server's idle timeout: a server closing it as it is reused would
    leave a send's outcome unknown."""
    async with client_of(GraphTransport(1, keepalive_expiry=0.1), serving) as http:
        for pause in (0.0, 0.3, 0.0):
            await asyncio.sleep(pause)
            assert (await http.post("/v25.0/1/messages", json={})).status_code == 200
    assert serving.connections == 2


async def test_failed_and_dropped_requests_give_their_turn_back(serving: Upstream) -> None:
    async with client_of(GraphTransport(1), serving, pool=0.5) as http:
        async with http.stream("POST", "/v25.0/1/messages", json={}) as response:
            assert response.status_code == 200  # the body is never read
        assert (await http.post("/v25.0/1/messages", json={})).status_code == 200
    refused = Upstream()
    refused.url = "http://127.0.0.1:1"  # nothing listens there
    async with client_of(GraphTransport(1), refused, pool=0.5) as http:
        for _ in range(2):  # the second would be a PoolTimeout had the first kept the turn
            with pytest.raises(httpx.ConnectError):
                await http.post("/v25.0/1/messages", json={})


async def test_the_service_sends_through_at_most_graph_max_connections(
    serving: Upstream, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of sandbox mode the app's Graph client uses this pool, sized by GRAPH_MAX_CONNECTIONS."""
    through: list[httpx.Request] = []
    handle = GraphTransport.handle_async_request

    def counted(self: GraphTransport, request: httpx.Request) -> Awaitable[httpx.Response]:
        through.append(request)
        return handle(self, request)

    monkeypatch.setattr(GraphTransport, "handle_async_request", counted)
    serving.delay = 0.05
    settings = load_settings(
        database_url=database_url,
        sandbox=False,
        graph_base_url=serving.url,
        graph_access_token="token",
        app_secret=SANDBOX_APP_SECRET,
        verify_token="verify",
        graph_max_connections=3,
        db_pool_size=5,
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        gate = app.state.gate
        async with gate.engine.begin() as conn:
            key = await api_keys.create(conn, "burst", Role.SEND)
        transport = httpx.ASGITransport(app=manager.app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gate", headers=headers) as client:
            try:
                await open_window(client)
                answers = await asyncio.gather(
                    *(client.post("/v1/messages", json=text_message()) for _ in range(12))
                )
                assert [r.status_code for r in answers] == [201] * 12, answers[0].text
            finally:
                await empty(str(settings.database_url))
    assert serving.requests == 12
    assert serving.peak == 3
    assert serving.connections == 3
    assert len(through) == 12  # this pool, not httpx's


def test_a_proxy_in_the_environment_keeps_httpx_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only httpx's pool speaks to proxies: with HTTPS_PROXY set, the Graph client keeps it (and its
    cost under a burst) rather than bypass the proxy."""
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    settings = load_settings(sandbox=True, graph_max_connections=7)
    pool = _graph_pool(settings)
    assert isinstance(pool, GraphTransport) and pool.limit == 7
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert _graph_pool(settings) is None


class Wire:
    """A server that keeps each request's bytes as they arrived, then answers `answer` (raw HTTP/1.1;
    empty: hangs up without answering)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if length:
            body = await reader.readexactly(int(length[1]))
        elif re.search(rb"(?i)transfer-encoding: *chunked", head):
            body = await reader.readuntil(b"\r\n0\r\n\r\n")
        else:
            body = b""
        self.requests.append(head + body)
        writer.write(self.answer)
        await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def wire(answer: bytes) -> AsyncIterator[tuple[Wire, str]]:
    found = Wire(answer)
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    async with server:
        yield found, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_what_leaves_is_what_httpx_built_and_a_compressed_answer_is_read() -> None:
    body = gzip.compress(b'{"id": "1"}')
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    async with (
        wire(answer % len(body) + body) as (server, url),
        httpx.AsyncClient(transport=GraphTransport(1), base_url=url) as http,
    ):
        # A signed media URL's query, as written; a streamed upload (the pass-through's)
        got = await http.get("/m?sig=a%2Fb%3D&x=1")
        assert got.json() == {"id": "1"}

        async def upload() -> AsyncIterator[bytes]:
            yield b"abc"
            yield b"defg"

        await http.post("/v25.0/1/media", content=upload(), headers={"Content-Type": "image/png"})
    get, post = server.requests
    assert get.startswith(b"GET /m?sig=a%2Fb%3D&x=1 HTTP/1.1\r\n")
    assert b"User-Agent: python-httpx/" in get and b"aiohttp" not in get
    assert b"Content-Type" not in get and b"Content-Length" not in get
    assert post.startswith(b"POST /v25.0/1/media HTTP/1.1\r\n")
    assert b"Content-Type: image/png\r\n" in post and b"octet-stream" not in post
    assert post.endswith(b"\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")  # chunked, once


async def test_a_slow_answer_is_a_read_timeout_and_gives_its_turn_back(serving: Upstream) -> None:
    serving.delay = 0.5
    timeout = httpx.Timeout(0.1, pool=1)
    async with httpx.AsyncClient(transport=GraphTransport(1), base_url=serving.url, timeout=timeout) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v25.0/1/messages", json={})
        serving.delay = 0
        assert (await http.post("/v25.0/1/messages", json={})).status_code == 200


async def test_a_hang_up_after_the_request_is_a_protocol_error_not_a_failed_connect() -> None:
    """The request left: the Graph client must call the outcome unknown (a ConnectError would be
    retried, and could send twice)."""
    async with (
        wire(b"") as (server, url),
        httpx.AsyncClient(transport=GraphTransport(1), base_url=url) as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError) as raised:
            await http.post("/v25.0/1/messages", json={"to": "1"})
        assert not isinstance(raised.value, httpx.ConnectError)
        with pytest.raises(httpx.RemoteProtocolError):  # and the turn came back
            await http.post("/v25.0/1/messages", json={"to": "2"})
    assert len(server.requests) == 2
