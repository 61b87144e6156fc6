"""Database plumbing: the URL (configured or embedded), the engine, the hot pool, and migrations."""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from window_gate.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
_HERE = Path(__file__).resolve().parent
# Wheels carry migrations inside the package; a source checkout keeps them at the top level.
MIGRATIONS = _HERE / "migrations" if (_HERE / "migrations").is_dir() else _HERE.parents[1] / "migrations"


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL kept in ``data_dir/pg``; it outlives this process."""
    from pgserver import get_server  # type: ignore[attr-defined]  # lazily: only embedded mode needs it

    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server: Any = get_server(pgdata, cleanup_mode=None)
    uri: str = server.get_uri()
    return uri.replace("postgresql://", "postgresql+asyncpg://", 1)


def database_url(settings: Settings) -> str:
    return settings.database_url or embedded_url(settings.data_dir)


def make_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,  # overflow connections are opened and closed per burst: costly, so none
        pool_timeout=5,
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": "window_gate"}, "timeout": 5},
    )


class HotPool:
    """The asyncpg pool of the hot paths, its callers served first come, first served.

    asyncpg hands a freed connection to whoever asks next, so a caller already waiting can be overtaken
    again and again: under load that was most of the window check's p99 (bench/). A fair semaphore of the
    pool's size queues callers in arrival order instead; the pool itself then never makes anyone wait.
    """

    def __init__(self, pool: Any, size: int) -> None:
        self.pool = pool
        self.turns = asyncio.Semaphore(size)

    async def fetch(self, query: str, *args: object) -> list[Any]:
        async with self.turns:
            rows: list[Any] = await self.pool.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: object) -> Any:
        async with self.turns:
            return await self.pool.fetchrow(query, *args)

    async def close(self) -> None:
        await self.pool.close()


class Statement:
    """SQL written once for both roads to PostgreSQL: SQLAlchemy connections (`:name` parameters) and the
    hot pool (asyncpg's `$n`), about a third of the client CPU per statement (bench/)."""

    def __init__(self, sql: str) -> None:
        self.text: TextClause = text(sql)
        self.names: list[str] = []
        self.sql = re.sub(r"(?<![:\w]):(\w+)", self._number, sql)  # not `::type` casts

    def _number(self, match: re.Match[str]) -> str:
        if match[1] not in self.names:
            self.names.append(match[1])
        return f"${self.names.index(match[1]) + 1}"

    async def run(
        self, conn: "AsyncConnection | HotPool", params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """Run it on either road; the first row it returns, if any."""
        if isinstance(conn, HotPool):
            row: Mapping[str, Any] | None = await conn.fetchrow(self.sql, *(params[n] for n in self.names))
            return row
        result = await conn.execute(self.text, params)
        found = result.mappings().first() if result.returns_rows else None
        return dict(found) if found else None


class Coalescer(Generic[T, R]):
    """Group commit: calls arriving while one is in flight wait for it, then go together as one call of
    `run` (items in, one result per item out, in order). Under load, one statement and one durable commit
    then serve many webhook deliveries (bench/); alone, a call goes at once. A failed group is run again
    item by item, so each caller gets its own answer or its own error."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_group: int = 64) -> None:
        self.run = run
        self.max_group = max_group
        self.waiting: list[tuple[T, asyncio.Future[R]]] = []
        self.draining: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self.draining is None:  # a task of its own: a caller's cancellation must not strand the others
            self.draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        group: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self.waiting:
                group, self.waiting = self.waiting[: self.max_group], self.waiting[self.max_group :]
                outcomes = await self._outcomes([item for item, _ in group])
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    _settle(future, outcome)
        except BaseException as exc:  # cancelled (shut down): nobody may wait forever
            for _, future in group + self.waiting:
                _settle(future, exc)
            self.waiting = []
            raise
        finally:
            self.draining = None

    async def _outcomes(self, items: list[T]) -> "list[R | BaseException]":
        try:
            return list(await self.run(items))
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            return [outcome for item in items for outcome in await self._outcomes([item])]


def _settle(future: "asyncio.Future[R]", outcome: "R | BaseException") -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def make_hot_pool(url: str, size: int) -> HotPool:
    """The hot paths (window lookups, API keys, webhook ingest, free sends) go to asyncpg directly: about
    a third of SQLAlchemy's client CPU per statement (measured in bench/). Connects lazily, like the engine."""
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=size,
        timeout=5,
        # Its statements take arrays (unnest): PostgreSQL would re-plan them on every call; the generic plan
        # is the same index walk at a quarter of the server CPU (measured in bench/).
        server_settings={"application_name": "window_gate", "plan_cache_mode": "force_generic_plan"},
        reset=_keep_session,
    )
    return HotPool(pool, size)


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
