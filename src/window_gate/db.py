"""Database plumbing: the URL (configured or embedded), the engine, the hot pool, and migrations."""

import asyncio
import logging
import os
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, ExceptionContext, Row, TextClause, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from window_gate.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
# A row of any shape, as repositories hand Core query results on.
AnyRow: TypeAlias = Row[*tuple[Any, ...]]
_HERE = Path(__file__).resolve().parent
# Wheels carry migrations inside the package; a source checkout keeps them at the top level.
MIGRATIONS = _HERE / "migrations" if (_HERE / "migrations").is_dir() else _HERE.parents[1] / "migrations"


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL kept in ``data_dir/pg``; it outlives this process
    (stop_embedded, `./dev stop-db`, or the `serve` that started it stops it)."""
    _quiet_pgserver()
    from pgserver import get_server  # type: ignore[attr-defined]  # lazily: only embedded mode needs it

    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server: Any = get_server(pgdata, cleanup_mode=None)
    uri: str = server.get_uri()
    return uri.replace("postgresql://", "postgresql+asyncpg://", 1)


def embedded_running(data_dir: Path) -> bool:
    return (data_dir / "pg" / "postmaster.pid").exists()


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL of ``data_dir`` (a fast stop: sessions still open are ended)."""
    _quiet_pgserver()
    from pgserver import pg_ctl  # type: ignore[attr-defined]

    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs PostgreSQL as this user under root
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=(data_dir / "pg").resolve(), user=user)


def _quiet_pgserver() -> None:
    # pgserver asks platformdirs for a runtime dir at import, which warns on every command where
    # XDG_RUNTIME_DIR is unset (servers, containers) and then uses /tmp/runtime-<uid>: that default is
    # fine for pgserver's lock file. Other runtime-dir problems still warn.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", category=UserWarning)


def database_url(settings: Settings) -> str:
    return settings.database_url or embedded_url(settings.data_dir)


def make_engine(url: str, pool_size: int = 10, timeout: float | None = None) -> AsyncEngine:
    """`timeout` bounds each call: the wait for a pooled connection, a connect, a statement (server-side
    too, so a lock wait ends there). None: unbounded statements, for operators' commands."""
    server_settings = {"application_name": "window_gate"}
    if timeout is not None:
        server_settings["statement_timeout"] = str(int(timeout * 1000))
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,  # overflow connections are opened and closed per burst: costly, so none
        pool_timeout=timeout or 5,
        pool_pre_ping=False,
        connect_args={
            "server_settings": server_settings,
            "timeout": timeout or 5,
            "command_timeout": timeout,
        },
    )
    event.listen(engine.sync_engine, "handle_error", _drop_timed_out)
    event.listen(engine.sync_engine, "checkout", _not_if_closed)
    return engine


def _not_if_closed(_: object, record: ConnectionPoolEntry, __: object) -> None:
    """A pooled connection the server closed meanwhile (restart, failover, network) is replaced before use
    rather than failing its request: asyncpg already knows, no round trip (unlike pool_pre_ping)."""
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise DisconnectionError("connection closed while pooled")


def _drop_timed_out(context: ExceptionContext) -> None:
    """A statement that timed out leaves its connection mid-protocol: it is dropped at once. Left to
    SQLAlchemy, a rollback or a graceful close would each wait on the silent server again (2 s apiece)."""
    if not isinstance(context.original_exception, TimeoutError):
        return
    context.is_disconnect = True
    context.invalidate_pool_on_disconnect = False  # one slow statement says nothing of the others
    if context.connection is not None:
        driver = context.connection.connection.driver_connection
        if driver is not None:
            driver.terminate()


class Rows(Protocol):
    """asyncpg's road: the hot pool, or one of its connections in a transaction (HotPool.transaction)."""

    async def fetch(self, query: str, *args: object) -> list[Any]: ...

    async def fetchrow(self, query: str, *args: object) -> Any: ...


class HotPool:
    """The asyncpg pool of the hot paths, its callers served first come, first served.

    asyncpg hands a freed connection to whoever asks next, so a caller already waiting can be overtaken
    again and again: under load that was most of the window check's p99 (bench/). A fair semaphore of the
    pool's size queues callers in arrival order instead; the pool itself then never makes anyone wait.

    Each call has one deadline for its turn, the connect and the statement: past it, TimeoutError (the
    app answers 503), whether the database is slow, hung or the queue long.
    """

    def __init__(self, pool: Any, size: int, timeout: float) -> None:
        self.pool = pool
        self.turns = asyncio.Semaphore(size)
        self.timeout = timeout

    def figures(self) -> tuple[int, int, int]:
        """(most connections, open, in use), for /metrics."""
        size = self.pool.get_size()
        return self.pool.get_max_size(), size, size - self.pool.get_idle_size()

    async def fetch(self, query: str, *args: object) -> list[Any]:
        rows: list[Any] = await self._call("fetch", query, args)
        return rows

    async def fetchrow(self, query: str, *args: object) -> Any:
        return await self._call("fetchrow", query, args)

    async def executemany(self, query: str, args: list[tuple[object, ...]]) -> None:
        """The statement once per set of arguments, in one round trip and all or nothing (asyncpg)."""
        await self._call("executemany", query, (args,))

    async def _call(self, method: str, query: str, args: tuple[object, ...]) -> Any:
        async with self._turn() as conn:
            return await getattr(conn, method)(query, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Rows]:
        """One connection in a transaction, for the few hot writes of several statements (a paid send):
        committed when the block ends, rolled back when it raises. Turn and deadline as for one call."""
        async with self._turn() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                yield conn
            except asyncio.CancelledError:
                raise  # the connection is dropped (_turn): PostgreSQL rolls back what it had
            except BaseException:
                await tx.rollback()
                raise
            await tx.commit()

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[Any]:
        async with asyncio.timeout(self.timeout), self.turns, self.pool.acquire() as conn:
            try:
                yield conn
            except (TimeoutError, asyncio.CancelledError):
                # Cut off mid-statement (deadline, cancelled caller): asyncpg would wait on a possibly
                # silent server to cancel it before reuse. Dropped instead; the pool connects anew.
                conn.terminate()
                raise

    async def close(self) -> None:
        await self.pool.close()


class Statement:
    """Hand-written SQL, kept for the hot statements only (bench/ measured them; everything else is
    SQLAlchemy Core against models.py). Written once for both roads to PostgreSQL: SQLAlchemy connections
    (`:name` parameters) and the hot pool (asyncpg's `$n`), about a third of the client CPU per statement
    (bench/). tests/test_sql_statements.py prepares every one against the migrated schema."""

    def __init__(self, sql: str) -> None:
        self.text: TextClause = text(sql)
        self.names: list[str] = []
        self.sql = re.sub(r"(?<![:\w]):(\w+)", self._number, sql)  # not `::type` casts

    def _number(self, match: re.Match[str]) -> str:
        if match[1] not in self.names:
            self.names.append(match[1])
        return f"${self.names.index(match[1]) + 1}"

    async def run(self, conn: AsyncConnection | Rows, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Run it on either road; the first row it returns, if any."""
        if not isinstance(conn, AsyncConnection):
            row: Mapping[str, Any] | None = await conn.fetchrow(self.sql, *(params[n] for n in self.names))
            return row
        result = await conn.execute(self.text, params)
        found = result.mappings().first() if result.returns_rows else None
        return dict(found) if found else None

    async def all(self, conn: AsyncConnection | Rows, params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """Run it on either road; every row it returns."""
        if not isinstance(conn, AsyncConnection):
            return await conn.fetch(self.sql, *(params[n] for n in self.names))
        return [dict(row) for row in (await conn.execute(self.text, params)).mappings()]


class Coalescer(Generic[T, R]):
    """Group commit: calls arriving while a call is in flight wait for it, then go together as one call
    of `run` (items in, one result per item out, in order). Under load, one statement and one durable
    commit then serve many webhook deliveries (bench/); alone, a call goes at once. Work waiting that
    weighs `lane_weight` or more opens another lane, up to `lanes` calls in flight: PostgreSQL then works
    on one group while the next is read (bench/: batches of statuses, and single ones under load), while
    a trickle of small items keeps filling one group. A failed group is run again item by item, so each caller gets its own answer or its own
    error."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        max_group: int = 64,
        *,
        lanes: int = 1,
        weight: Callable[[T], int] = lambda _: 1,
        lane_weight: int = 1,
    ) -> None:
        self.run = run
        self.max_group = max_group
        self.lanes, self.weight, self.lane_weight = lanes, weight, lane_weight
        self.waiting: list[tuple[T, asyncio.Future[R]]] = []
        self.waiting_weight = 0
        self.draining: set[asyncio.Task[None]] = set()
        self.in_flight = 0  # calls made and not answered yet: how loaded the caller is

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        self.waiting_weight += self.weight(item)
        if not self.draining or (len(self.draining) < self.lanes and self.waiting_weight >= self.lane_weight):
            # A task of its own: a caller's cancellation must not strand the others.
            self.draining.add(asyncio.create_task(self._drain()))
        self.in_flight += 1
        try:
            return await future
        finally:
            self.in_flight -= 1

    async def _drain(self) -> None:
        group: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self.waiting:
                group, self.waiting = self.waiting[: self.max_group], self.waiting[self.max_group :]
                self.waiting_weight -= sum(self.weight(item) for item, _ in group)
                outcomes = await self._outcomes([item for item, _ in group])
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    _settle(future, outcome)
                group = []
        except BaseException as exc:  # cancelled (shut down): nobody may wait forever
            for _, future in group + self.waiting:
                _settle(future, exc)
            self.waiting, self.waiting_weight = [], 0
            raise
        finally:  # at once, not in a done callback: a call arriving meanwhile must find this lane gone
            self.draining.discard(asyncio.current_task())

    async def _outcomes(self, items: list[T]) -> "list[R | BaseException]":
        try:
            return list(await self.run(items))
        except Exception as exc:
            # Item by item finds the one bad item; it cannot help when the database itself is not
            # answering, and would make the last caller wait out the bound once per item before it.
            if len(items) == 1 or unavailable(exc):
                return [exc] * len(items)
            return [outcome for item in items for outcome in await self._outcomes([item])]


def unavailable(exc: BaseException) -> bool:
    """The database did not answer in time or the connection broke: nothing about the statement itself."""
    import asyncpg

    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        exc = exc.orig or exc
    return isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError) or (
        str(getattr(exc, "sqlstate", "") or "")[:2] in UNAVAILABLE_SQLSTATE_CLASSES
    )


# SQLSTATE classes meaning "no usable database right now": connection, authorization, no such
# database, too many clients, shutting down or starting up, a statement past its timeout (57014).
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "53", "57"})


def _settle(future: "asyncio.Future[R]", outcome: "R | BaseException") -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def make_hot_pool(url: str, size: int, bound: float) -> HotPool:
    """The hot paths (window lookups, API keys, webhook ingest, free sends) go to asyncpg directly: about
    a third of SQLAlchemy's client CPU per statement (measured in bench/). Connects lazily, like the engine.
    `bound` (seconds) limits each call (HotPool); asyncpg's own bounds also end its cancel requests."""
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=size,
        timeout=bound,
        command_timeout=bound,
        server_settings={
            "application_name": "window_gate",
            # Its statements take arrays (unnest): PostgreSQL would re-plan them on every call; the generic
            # plan is the same index walk at a quarter of the server CPU (measured in bench/).
            "plan_cache_mode": "force_generic_plan",
            "statement_timeout": str(int(bound * 1000)),
        },
        reset=_keep_session,
    )
    return HotPool(pool, size, bound)


async def _keep_session(_: Any) -> None:
    """The hot pool's statements change no session state (no SET, LISTEN or advisory lock), so asyncpg's
    default reset query, one more round trip per checkout, is skipped."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Apply pending migrations (idempotent; a PostgreSQL advisory lock keeps replicas from racing)."""
    command.upgrade(alembic_config(url), "head")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def current_revision(sync_conn: Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()
