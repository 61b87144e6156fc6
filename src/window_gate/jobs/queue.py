"""Enqueue on the caller's transaction; read the backlog."""

import asyncio
from datetime import timedelta
from typing import Any

import orjson
from pgqueuer.core.tm import TaskManager
from pgqueuer.queries import Queries
from sqlalchemy import Text, case, cast, column, func, literal, select, table
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.jobs.registry import Payload

# pgqueuer's queue table (migration 0006), as much of it as we read: pgqueuer owns it, models.py does not.
QUEUE = table("pgqueuer", column("entrypoint"), column("status"), column("execute_after"), column("priority"))


async def enqueue(
    conn: AsyncConnection,
    entrypoint: str,
    payload: Payload | None = None,
    *,
    after: timedelta | None = None,
    key: str | None = None,
    priority: int = 0,
) -> int | None:
    """Add a job in `conn`'s transaction: it exists once that commits, and never if it rolls back.

    `after`: due that long after now (the database's clock). `key`: at most one queued-or-running job with
    it; while there is one, this enqueue is skipped and answers None. Otherwise the job's id."""
    body = orjson.dumps(payload) if payload is not None else None
    ids = await Queries(_OnConnection(conn)).enqueue(
        entrypoint, body, priority, after, key, on_conflict="skip"
    )
    return int(ids[0]) if ids[0] is not None else None


async def backlog(conn: AsyncConnection) -> list[tuple[str, str, int]]:
    """(entrypoint, state, count) of every job in the queue: `queued` (due), `scheduled` (due later),
    `picked` (running, or its worker died and its heartbeat has not yet timed out), `failed` (dead).
    Finished jobs leave the table, so this reads live jobs only: cheap enough for every scrape."""
    status = cast(QUEUE.c.status, Text)
    state = case(
        ((status == "queued") & (QUEUE.c.execute_after > func.now()), literal("scheduled")), else_=status
    )
    query = select(QUEUE.c.entrypoint, state.label("state"), func.count()).group_by(QUEUE.c.entrypoint, state)
    return [(row[0], row[1], row[2]) for row in await conn.execute(query)]


class _OnConnection:
    """pgqueuer's Driver protocol over our SQLAlchemy connection, for enqueue only (its one statement
    then joins our transaction: SQLAlchemy begins it first if nothing has yet)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def fetch(self, query: str, *args: object) -> list[dict[str, object]]:
        result = await self.conn.exec_driver_sql(query, args)
        return [dict(row._mapping) for row in result]

    async def execute(self, query: str, *args: object) -> str:
        await self.conn.exec_driver_sql(query, args)
        return ""

    async def notify(self, channel: str, payload: str) -> None:
        raise NotImplementedError("enqueue only")

    async def add_listener(self, channel: str, callback: Any) -> None:
        raise NotImplementedError("enqueue only")

    @property
    def shutdown(self) -> asyncio.Event:
        return asyncio.Event()

    @property
    def tm(self) -> TaskManager:
        return TaskManager()

    async def __aenter__(self) -> "_OnConnection":
        return self

    async def __aexit__(self, *_: object) -> None:
        return None
