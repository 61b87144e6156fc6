"""The Graph API's connection pool: httpx's interface over aiohttp's HTTP/1.1 client, at most `limit`
requests in flight, the others served first come, first served.

The gate speaks httpx everywhere (one client, its errors, the tests' fake Metas are httpx transports);
only the wire under it is aiohttp's, whose C parser and connection pool cost a fraction of httpcore's
pure-Python ones. Measured on one 2-core machine, CPU per request (this process, 64 in flight, a local
upstream): httpcore under our earlier pool 0.56–0.73 ms, aiohttp under httpx 0.38–0.39 ms (bench/ has the
send and release figures). httpcore's own pool was worse still under a burst: it re-examined every queued
request against every connection whenever one arrived or ended (22–28 ms of CPU per send at 500 at once).
Requests beyond the limit wait in a first-come-first-served semaphore, for no longer than the request's
pool timeout (then httpx.PoolTimeout: nothing was sent); aiohttp's pool then always has a connection to
give, the freed one or a new one.
"""

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
import yarl

# aiohttp's exceptions as httpx's, the most specific first: whether a request may have left decides what
# the Graph client does (a failed connect is retried; anything later is an unknown outcome).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # nothing was sent
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # an unreadable answer
    (aiohttp.ClientError, httpx.NetworkError),  # a reset, a broken pipe: the request may have left
)


@contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _EXCEPTIONS:
            if isinstance(exc, theirs):
                raise ours(f"{type(exc).__name__}: {exc}") from exc
        raise


HTTPX_SETS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")  # aiohttp adds none of its own


class GraphTransport(httpx.AsyncBaseTransport):
    """At most `limit` requests in flight (and as many connections, kept alive `keepalive_expiry` s).

    aiohttp does not look at an idle socket before reusing it (httpcore polled it), so a connection the
    server closes for idleness at that very moment would fail a send, its outcome unknown: measured with
    both sides at 1 s, 1 failure in 40 bursts. Our side closes first, a second before the common 5 s idle
    timeout of servers (uvicorn's; Meta's is not published, and is longer in practice): 0 in 60 with
    ours at 0.8 s against 1 s."""

    def __init__(
        self, limit: int, keepalive_expiry: float = 4.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.limit = limit
        self.turns = asyncio.Semaphore(limit)
        self.keepalive_expiry = keepalive_expiry
        self.ssl_context = ssl_context or httpx.create_ssl_context()
        self.session: aiohttp.ClientSession | None = None  # made in the event loop, on first use

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = _body(request)
        timeout = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout(timeout.get("pool")):
                await self.turns.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"no free connection within {timeout.get('pool')} s") from None
        try:
            with _as_httpx():
                response = await self._session().request(
                    request.method,
                    yarl.URL(str(request.url), encoded=True),  # as httpx wrote it: a signed URL stays intact
                    headers=_headers(request),
                    data=body,
                    timeout=aiohttp.ClientTimeout(
                        sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                    ),
                    allow_redirects=False,
                )
        except BaseException:
            self.turns.release()
            raise
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Stream(response, self.turns),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(
                limit=0,  # the turns limit it
                keepalive_timeout=self.keepalive_expiry,
                ssl=self.ssl_context,
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes the body by its Content-Encoding
                skip_auto_headers=HTTPX_SETS,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self.session

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


def _headers(request: httpx.Request) -> list[tuple[str, str]]:
    """httpx's headers as they are, but Transfer-Encoding: aiohttp chunks a streamed body itself."""
    return [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in request.headers.raw
        if k.lower() != b"transfer-encoding"
    ]


def _body(request: httpx.Request) -> bytes | AsyncIterator[bytes] | None:
    """The body in memory as it is (the sends); a streamed one (the pass-through's uploads) as a stream."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return request.read() or None
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("an async transport needs an async request body")
    return aiter(stream)


class _Stream(httpx.AsyncByteStream):
    """A response body that frees its connection and turn once closed (read to the end, or dropped)."""

    def __init__(self, response: aiohttp.ClientResponse, turns: asyncio.Semaphore) -> None:
        self.response = response
        self.turns: asyncio.Semaphore | None = turns

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx():
            async for part in self.response.content.iter_any():
                yield part

    async def aclose(self) -> None:
        try:
            self.response.release()  # back to the pool when read to the end; closed otherwise
        finally:
            turns, self.turns = self.turns, None
            if turns is not None:
                turns.release()
