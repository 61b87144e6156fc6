"""Message ids benchmark (message/service.py: new_id): recording sends into a grown `messages` table with
random UUIDv4 ids, as before, against time-ordered UUIDv7 ids.

    ./dev run python -m bench.ids [--rows 2000000] [--sends 40000] [--connections 8]

Two scratch databases on the local PostgreSQL, migrated to head, each grown to `--rows` earlier sends (and
their two events each) whose ids are of its kind: UUIDv4 in one, UUIDv7 made over the last 60 days in the
other. Then, after a CHECKPOINT (full-page writes start afresh for both), `--sends` more sends recorded
through the send path's own statement (message/repository.py: INSERT_PENDING, the message and its first
event) over `--connections` connections, ids of the database's kind. Measured: sends recorded per second,
the statement's latency percentiles, the WAL written per send (the cluster's; nothing else should run),
the size of the two indexes the ids land in (pk_messages, and uq_message_events_phone_number_id: a send's
events), over every partition. Prints a markdown table; drops the databases.
"""

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import uuid_utils.compat as uuid_utils

from bench.partitions import scratch
from window_gate.message.repository import INSERT_PENDING

# A UUIDv7 in SQL: the time in milliseconds over the first 6 bytes of a random UUID (version nibble left
# at 4: only the order matters here).
V7 = (
    "encode(overlay(uuid_send(gen_random_uuid()) placing "
    "substring(int8send((extract(epoch FROM t) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 'hex')::uuid"
)
FILL = """
INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, type, body, status,
                      graph_message_id, created_at)
SELECT {id}, $1, repeat('0', 64), '100' || (g % 20), '5511' || (900000000 + g % 100000), 'text',
       '{{"type": "text", "text": {{"body": "hello"}}}}', 'delivered', 'wamid.' || g, t
FROM (SELECT g, now() - make_interval(secs => 60 * 86400.0 * ($2 - g) / $2) AS t
      FROM generate_series(1, $2) g) s
"""
EVENTS = (
    "INSERT INTO message_events (phone_number_id, message_id, status, at) "
    "SELECT phone_number_id, id, s, created_at FROM messages, unnest(ARRAY['pending', 'accepted']) s"
)
# A send as INSERT_PENDING records it, but for its id, key and time.
SEND = {
    "request_hash": "0" * 64,
    "phone_number_id": "1001",
    "recipient_input": "+55 11 98765-4321",
    "type": "text",
    "body": '{"type": "text", "text": {"body": "hello"}}',
    "window": None,
    "pricing_category": None,
    "market": None,
    "billable": False,
    "estimated_amount": None,
    "currency": None,
    "inside_csw": True,
    "inside_fep": False,
}
KINDS: dict[str, tuple[str, Callable[[], uuid.UUID]]] = {
    "UUIDv4 (before)": ("gen_random_uuid()", uuid.uuid4),
    "UUIDv7 (now)": (V7, uuid_utils.uuid7),
}


async def grow(url: str, fill: str, *args: object) -> uuid.UUID:
    """An API key, then `fill` (its sends, given the key and `args`) and two events for each send."""
    conn = await asyncpg.connect(url)
    try:
        key = await conn.fetchval(
            "INSERT INTO api_keys (name, key_hash, key_prefix, role) "
            "VALUES ('bench', repeat('a', 64), 'wg_', 'admin') RETURNING id"
        )
        await conn.execute(fill, key, *args)
        await conn.execute(EVENTS)
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("VACUUM ANALYZE message_events")
        return uuid.UUID(str(key))
    finally:
        await conn.close()


async def record(
    url: str, key: uuid.UUID, make: Callable[[], uuid.UUID], sends: int, connections: int
) -> dict[str, float]:
    sql, names = INSERT_PENDING.sql, INSERT_PENDING.names
    values = {**SEND, "api_key_id": key, "idempotency_key": None}
    pool = await asyncpg.create_pool(url, min_size=connections, max_size=connections)
    assert pool is not None
    latencies: list[float] = []

    async def one_connection(count: int) -> None:
        async with pool.acquire() as conn:
            statement = await conn.prepare(sql)
            for _ in range(count):
                args = [make() if n == "id" else datetime.now(UTC) if n == "at" else values[n] for n in names]
                start = time.perf_counter()
                await statement.fetch(*args)
                latencies.append(time.perf_counter() - start)

    try:
        async with pool.acquire() as conn:
            await conn.execute("CHECKPOINT")
            lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
        start = time.perf_counter()
        await asyncio.gather(*(one_connection(sends // connections) for _ in range(connections)))
        elapsed = time.perf_counter() - start
        async with pool.acquire() as conn:
            wal = await conn.fetchval("SELECT pg_current_wal_lsn()") - lsn  # asyncpg: an LSN as an int
            sizes = await conn.fetchrow(  # over every partition (migration 0019)
                "SELECT (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('pk_messages')) AS pkey, "
                "(SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('uq_message_events_phone_number_id')) "
                "AS events"
            )
    finally:
        await pool.close()
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "rate": len(latencies) / elapsed,
        "p50": cuts[49] * 1000,
        "p99": cuts[98] * 1000,
        "wal": float(wal) / len(latencies),
        "pkey": sizes["pkey"] / 2**20,
        "events": sizes["events"] / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--sends", type=int, default=40_000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for kind, (id_sql, make) in KINDS.items():
        with scratch("ids", "head") as url:
            key = asyncio.run(grow(url, FILL.format(id=id_sql), args.rows))
            results[kind] = asyncio.run(record(url, key, make, args.sends, args.connections))
    print(
        f"{args.sends:,} sends recorded over {args.connections} connections into {args.rows:,} earlier ones\n"
    )
    print("| ids | sends/s | p50 ms | p99 ms | WAL per send | pk_messages MB | events' message_id MB |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(
            f"| {kind} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['wal'] / 1024:.1f} KiB "
            f"| {r['pkey']:.0f} | {r['events']:.0f} |"
        )


if __name__ == "__main__":
    main()
