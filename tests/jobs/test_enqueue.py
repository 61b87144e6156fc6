"""Enqueue joins the business write's transaction; the migrated schema is pgqueuer's own."""

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from pgqueuer.queries import Queries
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from window_gate import db, jobs


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.make_engine(database_url, 2, 5)
    yield engine
    await engine.dispose()


async def queued(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return list(await conn.fetch("SELECT entrypoint, payload, dedupe_key, status FROM pgqueuer"))
    finally:
        await conn.close()


class Boom(Exception):
    pass


async def test_rolled_back_write_leaves_no_job(engine: AsyncEngine, database_url: str) -> None:
    with pytest.raises(Boom):
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
            assert await jobs.enqueue(conn, "test.job", {"n": 1}) is not None
            raise Boom
    async with engine.begin() as conn:  # enqueue first thing in the transaction: still inside it
        await jobs.enqueue(conn, "test.job", {"n": 2})
        await conn.rollback()
    assert await queued(database_url) == []


async def test_committed_write_leaves_exactly_one_job(engine: AsyncEngine, database_url: str) -> None:
    async with engine.begin() as conn:
        job = await jobs.enqueue(conn, "test.job", {"n": 1})
        assert await queued(database_url) == []  # not before the commit
    rows = await queued(database_url)
    assert [(r["entrypoint"], r["payload"], r["status"]) for r in rows] == [
        ("test.job", b'{"n":1}', "queued")
    ]
    assert job is not None


async def test_a_key_allows_one_queued_job(engine: AsyncEngine, database_url: str) -> None:
    async with engine.begin() as conn:
        first = await jobs.enqueue(conn, "test.job", key="customer-1")
        second = await jobs.enqueue(conn, "test.job", key="customer-1")
        other = await jobs.enqueue(conn, "test.job", key="customer-2", after=timedelta(hours=1))
    assert first is not None and second is None and other is not None
    assert sorted(r["dedupe_key"] for r in await queued(database_url)) == ["customer-1", "customer-2"]


async def test_migrated_schema_is_pgqueuers_own(database_url: str) -> None:
    """Migration 0006 holds a copy of pgqueuer's install statements: the installed library finds nothing
    to change, and its workers' start-up check passes."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        queries = Queries.from_asyncpg_connection(conn)
        plan = await queries.plan_upgrade()
        assert list(plan.statements) == [], plan
        from pgqueuer.qm import QueueManager

        await QueueManager(queries).verify_structure()
    finally:
        await conn.close()
