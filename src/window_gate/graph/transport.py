"""The Graph API's connection pool: keep-alive HTTP/1.1 connections, at most `limit` requests in flight,
every request served at O(1) however many wait.

httpx's own pool (httpcore's) re-examines every queued request against every connection, and every idle
connection's socket, whenever a request arrives or a response ends: O(queued × connections) per event.
Under a burst the event loop falls behind, more connections sit idle between two requests and more
requests queue, so each send costs more CPU the more sends there are: with it, one worker spent 22–28 ms
of CPU per send at 500 sends at once, 10–17 ms at 50 (bench/, burst, a busy 2-core machine); with this
pool, 2.9–3.6 ms and 2.9–4.1 ms. Here requests beyond the limit wait in a first-come-first-served
semaphore, a request takes the connection freed last, and only that one connection (and the oldest idle
one) is looked at.
"""

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

# httpcore's exceptions as httpx names them (httpx maps them the same way, in a private helper); the
# most specific first, so that a ConnectTimeout is not reported as a mere TimeoutException.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


Origin = tuple[bytes, bytes, int | None]


@contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _EXCEPTIONS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class GraphTransport(httpx.AsyncBaseTransport):
    """At most `limit` requests in flight (and as many connections), the others waiting their turn for
    no longer than the request's pool timeout (then httpx.PoolTimeout: nothing was sent)."""

    def __init__(
        self, limit: int, keepalive_expiry: float = 5.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.limit = limit
        self.turns = asyncio.Semaphore(limit)
        self.keepalive_expiry = keepalive_expiry
        self.ssl_context = ssl_context or httpx.create_ssl_context()
        self.idle: dict[Origin, deque[httpcore.AsyncHTTPConnection]] = {}  # the freed last on the right

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("an async transport needs an async request body")
        wait = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(wait):
                await self.turns.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"no free connection within {wait} s") from None
        url = httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        )
        origin: Origin = (url.scheme, url.host, url.port)  # httpcore.Origin is not hashable
        connection = None
        try:
            with _as_httpx():
                connection = await self._connection(origin, url.origin)
                response = await connection.handle_async_request(
                    httpcore.Request(
                        method=request.method,
                        url=url,
                        headers=request.headers.raw,
                        content=request.stream,
                        extensions=request.extensions,
                    )
                )
        except BaseException:
            self._release(origin, connection)
            raise
        if not isinstance(response.stream, AsyncIterable):  # httpcore's async connections give one
            self._release(origin, connection)
            raise TypeError("an async connection gave a sync response body")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Stream(response.stream, lambda: self._release(origin, connection)),
            extensions=response.extensions,
        )

    async def _connection(self, origin: Origin, target: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        """The connection freed last, if it is still good; else a new one (connected when used)."""
        idle = self.idle.setdefault(origin, deque())
        found = None
        while idle and found is None:
            found = idle.pop()
            if found.is_closed() or found.has_expired():
                await found.aclose()
                found = None
        # The oldest idle connection may have outlived its keep-alive: closing one such per request keeps
        # a quieter pool from holding sockets the server has long closed.
        if idle and idle[0].has_expired():
            await idle.popleft().aclose()
        return found or httpcore.AsyncHTTPConnection(
            target, ssl_context=self.ssl_context, keepalive_expiry=self.keepalive_expiry
        )

    def _release(self, origin: Origin, connection: httpcore.AsyncHTTPConnection | None) -> None:
        """Its response is read or dropped: the connection is idle again (or closed), the turn is free."""
        if connection is not None and connection.is_idle() and not connection.is_closed():
            self.idle[origin].append(connection)
        self.turns.release()

    async def aclose(self) -> None:
        for idle in self.idle.values():
            while idle:
                await idle.pop().aclose()


class _Stream(httpx.AsyncByteStream):
    """A response body that frees its connection and turn once closed (read to the end, or dropped)."""

    def __init__(self, stream: AsyncIterable[bytes], release: Callable[[], None]) -> None:
        self.stream = stream
        self.release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx():
            async for part in self.stream:
                yield part

    async def aclose(self) -> None:
        try:
            close: Any = getattr(self.stream, "aclose", None)
            if close is not None:
                with _as_httpx():
                    await close()
        finally:
            release, self.release = self.release, None
            if release is not None:
                release()
