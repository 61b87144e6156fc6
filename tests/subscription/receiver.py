"""A subscriber over real sockets: uvicorn on a free port, keeping what it is sent and answering as told."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from starlette.types import Receive, Scope, Send

from tests.conftest import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """`status`: what it answers; `hang`: seconds it waits before answering. `url` is where it listens."""

    port: int = field(default_factory=free_port)
    status: int = 200
    hang: float = 0.0
    received: list[Received] = field(default_factory=list)  # answered (after the hang)
    arrivals: list[Received] = field(default_factory=list)  # as they came, before the hang
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        got = Received(scope["path"], headers, body)
        self.arrivals.append(got)
        self.arrived.set()
        if self.hang:
            await asyncio.sleep(self.hang)
        self.received.append(got)
        self.arrived.set()
        status = self.status
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"busy"})

    async def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        """Once `count` requests were answered."""
        return await self._wait(self.received, count, within)

    async def wait_for_arrival(self, count: int, within: float = 10.0) -> list[Received]:
        """Once `count` requests came (answered or still hanging)."""
        return await self._wait(self.arrivals, count, within)

    async def _wait(self, seen: list[Received], count: int, within: float) -> list[Received]:
        async with asyncio.timeout(within):
            while len(seen) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return seen


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver | None = None) -> AsyncIterator[Receiver]:
    """The receiver listening until the block ends."""
    receiver = receiver or Receiver()
    server = uvicorn.Server(
        uvicorn.Config(
            receiver,
            port=receiver.port,
            log_config=None,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn has a flag, no event)
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task
