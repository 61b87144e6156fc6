"""How the next features map onto jobs (the recipes in jobs/__init__.py), run on two replicas."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.jobs import until
from window_gate import db, jobs
from window_gate.config import Settings

ITEMS = (
    "CREATE TABLE test_held (id bigserial PRIMARY KEY, key text NOT NULL, seq int NOT NULL, "
    "released_at timestamptz, released_order bigserial)"
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.make_engine(database_url, 2, 5)
    async with engine.begin() as conn:
        await conn.execute(text(ITEMS))
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE test_held"))
    await engine.dispose()


async def test_per_key_order_one_at_a_time_whichever_replica_claims(
    settings: Settings, database_url: str, engine: AsyncEngine
) -> None:
    """Held messages: each job only wakes its key; under the key's advisory lock it releases the key's
    oldest held item, so every key's items leave in the order accepted, while keys run in parallel."""
    registry, running, overlap = jobs.Registry(), set[str](), []

    @registry.task("test.release")
    async def release(ctx: jobs.Context, payload: jobs.Payload) -> None:
        key = payload["key"]
        async with ctx.engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
            overlap.append(key in running)
            running.add(key)
            await asyncio.sleep(0.01)  # a send's worth of work, inviting any overtaking
            await conn.execute(
                text(
                    "UPDATE test_held SET released_at = clock_timestamp(), released_order = DEFAULT WHERE id = "
                    "(SELECT id FROM test_held WHERE key = :key AND released_at IS NULL ORDER BY id LIMIT 1)"
                ),
                {"key": key},
            )
            running.discard(key)

    async with (
        jobs.running(settings, database_url, registry, 6),
        jobs.running(settings, database_url, registry, 6),
    ):
        for seq in range(10):
            for key in ("a", "b", "c"):
                async with engine.begin() as conn:  # accepting a held message, and its wake-up
                    await conn.execute(
                        text("INSERT INTO test_held (key, seq) VALUES (:key, :seq)"), {"key": key, "seq": seq}
                    )
                    await jobs.enqueue(conn, "test.release", {"key": key})

        async def all_released() -> bool:
            async with engine.connect() as conn:
                left: int = (
                    await conn.execute(text("SELECT count(*) FROM test_held WHERE released_at IS NULL"))
                ).scalar_one()
                return left == 0

        await until(all_released, 20)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT key, seq FROM test_held ORDER BY released_order"))).all()
    for key in ("a", "b", "c"):
        assert [seq for k, seq in rows if k == key] == list(range(10))
    assert not any(overlap)  # one at a time per key


async def test_pacing_a_campaign_by_rescheduling_its_next_tick(
    settings: Settings, database_url: str, engine: AsyncEngine
) -> None:
    """A campaign at a rate: one `concurrency=1` task sends a slice per tick and enqueues the next tick in
    the transaction recording the slice (pgqueuer 1.6 has no rate limit of its own)."""
    registry, sent = jobs.Registry(), []
    loop = asyncio.get_running_loop()

    @registry.task("test.campaign_tick", concurrency=1)
    async def tick(ctx: jobs.Context, payload: jobs.Payload) -> None:
        remaining, per_tick = payload["remaining"], payload["per_tick"]
        sent.extend([loop.time()] * min(per_tick, remaining))
        if remaining > per_tick:
            async with ctx.engine.begin() as conn:
                await jobs.enqueue(
                    conn,
                    "test.campaign_tick",
                    {"remaining": remaining - per_tick, "per_tick": per_tick},
                    after=timedelta(seconds=0.5),
                )

    async with (
        jobs.running(settings, database_url, registry, 4),
        jobs.running(settings, database_url, registry, 4),
    ):
        async with engine.begin() as conn:
            await jobs.enqueue(conn, "test.campaign_tick", {"remaining": 20, "per_tick": 5})  # 10/s

        async def finished() -> bool:
            return len(sent) == 20

        await until(finished, 10)
    took = sent[-1] - sent[0]
    assert 1.5 <= took < 3.0, took  # four slices, three pauses of 0.5 s: about 10 a second, not all at once
