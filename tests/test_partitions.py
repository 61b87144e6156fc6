"""History tables partitioned by month (partitions.py, migration 0017), on a database of their own: rows
land in their month's partition, a month without one in DEFAULT until a roll moves them, retention drops
whole partitions and keeps every row younger than it, and the migration keeps the rows it found."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.conftest import scratch_database
from window_gate import db, partitions
from window_gate.message.repository import forget_keys
from window_gate.partitions import month_start, partition_name

NOW = datetime.now(UTC)
KEEP = timedelta(days=30)


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "window_gate_partitions") as url:
        yield url


@pytest.fixture
async def engine(scratch_url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(db.upgrade, scratch_url)
    engine = create_async_engine(scratch_url)
    yield engine
    await engine.dispose()


async def deliver(engine: AsyncEngine, *times: datetime) -> None:
    async with engine.begin() as conn:
        for at in times:
            await conn.execute(
                text("INSERT INTO webhook_deliveries (received_at, body) VALUES (:at, '\\x7b7d')"), {"at": at}
            )


async def where(engine: AsyncEngine) -> list[tuple[str, datetime]]:
    """Each row's partition and time, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT tableoid::regclass::text, received_at FROM webhook_deliveries ORDER BY received_at")
        )
        return [(name, at) for name, at in rows]


async def test_a_row_lands_in_its_month_or_in_default_until_a_roll_makes_its_month(
    engine: AsyncEngine,
) -> None:
    later = month_start(NOW, 2) + timedelta(days=3)  # made by the migration
    far = month_start(NOW, 7) + timedelta(days=3)  # not made yet
    await deliver(engine, NOW, later, far)
    assert [name for name, _ in await where(engine)] == [
        "webhook_deliveries_before",  # this month: the table as it was, up to the month after its newest row
        partition_name("webhook_deliveries", month_start(later)),
        "webhook_deliveries_default",
    ]

    async with engine.begin() as conn:
        rolled = await partitions.roll(conn, "webhook_deliveries", KEEP)
    assert rolled.made == [partition_name("webhook_deliveries", month_start(far))] and rolled.moved == 1
    assert rolled.dropped == []
    assert (await where(engine))[-1] == (partition_name("webhook_deliveries", month_start(far)), far)

    async with engine.begin() as conn:  # nothing left to do
        again = await partitions.roll(conn, "webhook_deliveries", KEEP)
    assert (again.made, again.dropped, again.moved) == ([], [], 0)


async def test_months_ahead_are_made_as_time_passes(engine: AsyncEngine) -> None:
    future = month_start(NOW, 5) + timedelta(days=10)
    async with engine.begin() as conn:
        rolled = await partitions.roll(conn, "relay_attempts", KEEP, now=future)
    expected = [
        partition_name("relay_attempts", month_start(future, n)) for n in range(partitions.MONTHS_AHEAD + 1)
    ]
    assert rolled.made[-len(expected) :] == expected
    async with engine.begin() as conn:  # an attempt of that month lands in its own partition
        await conn.execute(
            text("INSERT INTO relay_attempts (delivery_id, at, duration_ms) VALUES (1, :at, 5)"),
            {"at": future},
        )
        assert await conn.scalar(text("SELECT tableoid::regclass::text FROM relay_attempts")) == expected[0]


async def test_retention_drops_whole_partitions_and_keeps_every_row_younger_than_it(
    engine: AsyncEngine,
) -> None:
    times = [NOW + timedelta(days=d) for d in range(0, 150, 9)]
    await deliver(engine, *times)
    async with engine.begin() as conn:
        await partitions.roll(conn, "webhook_deliveries", KEEP)  # the months those rows need
    later = NOW + timedelta(days=120)
    async with engine.begin() as conn:
        rolled = await partitions.roll(conn, "webhook_deliveries", KEEP, now=later)

    cutoff = later - KEEP
    kept = [at for _, at in await where(engine)]
    assert [at for at in times if at >= cutoff] == [at for at in kept if at >= cutoff]  # all younger: kept
    assert all(at >= month_start(cutoff) for at in kept)  # older: only those sharing cutoff's month
    assert len(kept) < len(times)
    assert "webhook_deliveries_before" in rolled.dropped
    assert partition_name("webhook_deliveries", month_start(cutoff)) not in rolled.dropped


async def test_a_roll_gives_way_to_writers_rather_than_hold_up_ingest(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping a partition takes the whole table: behind a writer's open transaction, the roll stops after
    its lock timeout (and runs again the next hour) instead of queueing every later writer behind it."""
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT", "200ms")
    await deliver(engine, NOW)
    async with engine.connect() as writer:
        await writer.execute(text("INSERT INTO webhook_deliveries (body) VALUES ('\\x7b7d')"))  # left open
        with pytest.raises(DBAPIError, match="lock timeout"):
            async with engine.begin() as conn:
                await partitions.roll(conn, "webhook_deliveries", KEEP, now=NOW + timedelta(days=120))
        await writer.rollback()
    assert len(await where(engine)) == 1


def sql(url: str, *statements: str) -> list[list[tuple[Any, ...]]]:
    """Each statement's rows, all in one transaction."""

    async def each() -> list[list[tuple[Any, ...]]]:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                results = [await conn.execute(text(s)) for s in statements]
                return [[tuple(r) for r in result] if result.returns_rows else [] for result in results]
        finally:
            await engine.dispose()

    return asyncio.run(each())


def test_the_migration_keeps_the_rows_and_ids_it_found_both_ways(scratch_url: str) -> None:
    config = db.alembic_config(scratch_url)
    command.upgrade(config, "0016")
    run = partial(sql, scratch_url)
    inserted = run(
        "INSERT INTO webhook_deliveries (body, received_at) "
        "SELECT '\\x7b7d', now() - make_interval(days => d) FROM generate_series(1, 40) d RETURNING id",
        "INSERT INTO relay_deliveries (subscription_id, event_id, event_type, body) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), 'window.opened', '\\x7b7d') RETURNING id",
    )
    delivery = inserted[1][0][0]
    run(
        f"INSERT INTO relay_attempts (delivery_id, at, duration_ms) VALUES ({delivery}, now(), 3) RETURNING id"
    )
    command.upgrade(config, "0018")
    after, newer, attempts = run(
        "SELECT tableoid::regclass::text, count(*), max(id) FROM webhook_deliveries GROUP BY 1",
        "INSERT INTO webhook_deliveries (body) VALUES ('\\x7b7d') RETURNING id",
        "SELECT tableoid::regclass::text, delivery_id FROM relay_attempts",
    )
    assert after == [("webhook_deliveries_before", 40, 40)]
    assert newer == [(41,)]  # the identity goes on where the table's was
    assert attempts == [("relay_attempts_before", delivery)]

    command.downgrade(config, "0016")
    plain, next_id = run(
        "SELECT tableoid::regclass::text, count(*) FROM webhook_deliveries GROUP BY 1",
        "INSERT INTO webhook_deliveries (body) VALUES ('\\x7b7d') RETURNING id",
    )
    assert plain == [("webhook_deliveries", 41)] and next_id == [(42,)]


SEND = (
    "INSERT INTO messages (id, api_key_id, idempotency_key, request_hash, phone_number_id, recipient_input, type, "
    "body, status, graph_message_id, created_at) SELECT {id}, k.id, {key}, 'h', '106540352242922', '15551234567', "
    "'text', '{{}}', 'read', {wamid}, {at} FROM api_keys k"
)


def test_the_messages_migration_keeps_sends_events_and_keys_both_ways(scratch_url: str) -> None:
    """0019 attaches the sends and events it finds, moves their Idempotency-Keys to message_keys, and goes
    on with the events' ids; the downgrade puts every row back, with the uniqueness it enforced."""
    config = db.alembic_config(scratch_url)
    command.upgrade(config, "0018")
    run = partial(sql, scratch_url)
    run(
        "INSERT INTO api_keys (name, key_hash, key_prefix, role) VALUES ('k', repeat('a', 64), 'wg_', 'send')",
        *(
            SEND.format(
                id="gen_random_uuid()", key=key, wamid=f"'wamid.{n}'", at=f"now() - interval '{n} days'"
            )
            for n, key in enumerate(("'order-1'", "NULL", "'order-2'"))
        ),
        "INSERT INTO message_events (message_id, status, at) SELECT id, 'read', created_at FROM messages",
    )
    command.upgrade(config, "0019")
    where_sends, keys, event = run(
        "SELECT tableoid::regclass::text, count(*) FROM messages GROUP BY 1",
        "SELECT k.idempotency_key, k.created_at = m.created_at FROM message_keys k "
        "JOIN messages m ON m.id = k.message_id ORDER BY 1",
        "INSERT INTO message_events (message_id, status, at) VALUES (gen_random_uuid(), 'sent', now()) RETURNING id",
    )
    assert where_sends == [("messages_before", 3)]
    assert keys == [("order-1", True), ("order-2", True)]
    assert event == [(4,)]  # the identity goes on where the table's was
    fillfactor = run(
        "SELECT c.relname, c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'messages'::regclass AND c.relname ~ '_[0-9]{4}_[0-9]{2}$'"
    )[0]
    assert len(fillfactor) == 2 and all(options == ["fillfactor=70"] for _, options in fillfactor)

    command.downgrade(config, "0018")
    back = run(
        "SELECT tableoid::regclass::text, count(*) FROM messages GROUP BY 1",
        "SELECT count(*) FROM message_events",
    )
    assert back == [[("messages", 3)], [(3,)]]  # the event without a send goes, as the foreign key's cascade
    with pytest.raises(DBAPIError, match="uq_messages_api_key_id"):
        run(SEND.format(id="gen_random_uuid()", key="'order-1'", wamid="NULL", at="now()"))


def test_the_keys_migration_gives_events_and_held_messages_their_number_both_ways(scratch_url: str) -> None:
    """0020 keys the hot tables by phone_number_id first: each event and held message gets its send's and
    wait's number, an event whose send is gone goes (nothing reached it), and a wait's held messages still
    go with it. The downgrade keeps every row."""
    config = db.alembic_config(scratch_url)
    command.upgrade(config, "0019")
    run = partial(sql, scratch_url)
    wait = "'0190a0b1-0000-7000-8000-000000000001'"
    run(
        "INSERT INTO api_keys (name, key_hash, key_prefix, role) VALUES ('k', repeat('a', 64), 'wg_', 'send')",
        SEND.format(id="gen_random_uuid()", key="NULL", wamid="'wamid.1'", at="now()"),
        "INSERT INTO message_events (message_id, status, at) SELECT id, s, created_at FROM messages, "
        "unnest(ARRAY['pending', 'held']) s",
        "INSERT INTO message_events (message_id, status, at) VALUES (gen_random_uuid(), 'sent', now())",
        "INSERT INTO customers (wa_id) VALUES ('15551234567')",
        "INSERT INTO continuations (id, phone_number_id, customer_id, api_key_id, state) "
        f"SELECT {wait}, '106540352242922', c.id, k.id, 'awaiting_reply' FROM customers c, api_keys k",
        f"INSERT INTO held_messages (message_id, continuation_id, hold_until) SELECT id, {wait}, now() FROM messages",
    )
    command.upgrade(config, "0020")
    events, held = run(
        "SELECT e.status, e.phone_number_id FROM message_events e ORDER BY e.status",
        "SELECT h.phone_number_id, h.message_id = m.id FROM held_messages h, messages m",
    )
    assert events == [("held", "106540352242922"), ("pending", "106540352242922")]
    assert held == [("106540352242922", True)]
    with pytest.raises(DBAPIError, match="fk_held_messages_phone_number_id_continuations"):
        run(
            "INSERT INTO held_messages (phone_number_id, message_id, continuation_id, hold_until) "
            f"VALUES ('another', gen_random_uuid(), {wait}, now())"
        )

    command.downgrade(config, "0019")
    assert run(
        "SELECT count(*) FROM message_events",
        "SELECT count(*) FROM held_messages",
        f"DELETE FROM continuations WHERE id = {wait}",
        "SELECT count(*) FROM held_messages",
    ) == [[(2,)], [(1,)], [], [(0,)]]  # the wait's held messages go with it, by the restored foreign key


async def test_sends_are_kept_forever_unless_a_retention_is_set_and_their_keys_go_with_them(
    engine: AsyncEngine,
) -> None:
    """MESSAGE_RETENTION_DAYS unset: a roll a year on drops nothing. Set: the months wholly past it go,
    and the Idempotency-Keys of the sends they held (a replay of one is then a new send)."""
    old, recent = NOW - timedelta(days=1), NOW + timedelta(days=100)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO api_keys (name, key_hash, key_prefix, role) VALUES ('k', repeat('a', 64), 'wg_', 'send')"
            )
        )
        for n, at in enumerate((old, recent)):
            sent = SEND.format(id="gen_random_uuid()", key=f"'order-{n}'", wamid="NULL", at=":at")
            await conn.execute(text(f"{sent} RETURNING id"), {"at": at})
            await conn.execute(
                text(
                    "INSERT INTO message_keys SELECT api_key_id, idempotency_key, id, created_at FROM messages "
                    "WHERE idempotency_key = :key"
                ),
                {"key": f"order-{n}"},
            )
        rolled = await partitions.roll(conn, "messages", None, now=NOW + timedelta(days=365))
        assert rolled.dropped == [] and await forget_keys(conn) == 0
        await partitions.roll(conn, "messages", timedelta(days=62), now=NOW + timedelta(days=150))
        assert await forget_keys(conn) == 1
        kept = await conn.execute(
            text("SELECT k.idempotency_key FROM message_keys k JOIN messages m ON m.id = k.message_id")
        )
        assert kept.scalars().all() == ["order-1"]
