"""A TCP proxy between the app and PostgreSQL that a test can break: cut every connection, or hang (accept
and hold connections, forward nothing, answer nothing), and then heal."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit


class DbProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "forward"  # forward | hang | cut
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def url(self, database_url: str) -> str:
        """`database_url`, pointed at this proxy."""
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def hang(self) -> None:
        """Connections stay open, new ones are accepted, but no byte goes either way: a hung server."""
        self.mode = "hang"
        self.flowing.clear()

    def cut(self) -> None:
        """Every open connection is reset, new ones are closed at once: the database went away."""
        self.mode = "cut"
        self.flowing.set()
        for writer in list(self.writers):
            writer.transport.abort()

    def heal(self) -> None:
        """New connections work again (connections held during a hang resume)."""
        self.mode = "forward"
        self.flowing.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            client_writer.transport.abort()
            return
        await self.flowing.wait()  # a connection made during a hang is accepted, and then silence
        if self.mode == "cut":
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self.writers |= {client_writer, server_writer}
        pipes = [
            asyncio.create_task(self._pipe(client_reader, server_writer)),
            asyncio.create_task(self._pipe(server_reader, client_writer)),
        ]
        self.pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self.pipes.difference_update(pipes)
            for writer in (client_writer, server_writer):
                self.writers.discard(writer)
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                if self.mode == "cut":
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cut()
        for task in list(self.pipes):
            task.cancel()
        with contextlib.suppress(Exception):
            if self.server is not None:
                await self.server.wait_closed()


@contextlib.asynccontextmanager
async def proxy_for(database_url: str) -> AsyncIterator[tuple[DbProxy, str]]:
    """A proxy in front of the database of `database_url`, and the URL that goes through it."""
    parts = urlsplit(database_url)
    proxy = DbProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        yield proxy, proxy.url(database_url)
    finally:
        await proxy.close()
