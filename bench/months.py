"""Messages by the month benchmark (migration 0019): the send path's statements on a grown `messages`
table, plain as before 0019 and partitioned by month a year on, and what the upgrade costs.

    ./dev run python -m bench.months [--months 12] [--rows-per-month 200000] [--sends 40000] [--connections 8]

Two scratch databases on the local PostgreSQL, each grown to `--months` months of earlier sends
(`--rows-per-month` a month, UUIDv7 ids, two events each):
- plain: migrated to 0018, one table as before (with what the statements now need of 0019 and 0020: the
  table `message_keys`, the function `message_made_after`, the events' number and unique key);
- by month: migrated to head, its partitions laid out as a year of hourly rolls leaves them (the months
  before in `messages_before`, then a partition per month).
Then, after a CHECKPOINT, `--sends` sends recorded and answered as the send path does them (INSERT_PENDING
with an Idempotency-Key, then FINISH by id: message/repository.py) over `--connections` connections. The
partitioned table three times: FINISH as the service runs it (by id alone: each month's index probed), and
naming the id's month (`created_at >= message_made_after(id)`), with PostgreSQL's plan cache as it is
(a custom plan, planned each run, prunes; it looks cheaper than the generic one) and with generic plans
forced (`plan_cache_mode`: pruned when the run starts). Then the plain database upgraded to 0019, timed
(attach, keys built over its rows), then to 0020 (the events' number filled, every key rebuilt by the number
first), and measured once more, just upgraded (every row in `messages_before`). Prints a markdown table;
drops the databases.
"""

import argparse
import asyncio
import re
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import uuid_utils.compat as uuid_utils
from alembic.script import ScriptDirectory

from bench.ids import SEND, V7, grow
from bench.partitions import migrate, scratch, timed
from window_gate import db, partitions
from window_gate.message.repository import FINISH, INSERT_PENDING

FILL = """
INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, type, body, status,
                      graph_message_id, created_at)
SELECT {id}, $1, repeat('0', 64), '100' || (g % 20), '5511' || (900000000 + g % 100000), 'text',
       '{{"type": "text", "text": {{"body": "hello"}}}}', 'delivered', 'wamid.' || g, t
FROM (SELECT g, now() - make_interval(secs => $3::float8 * ($2 - g) / $2) AS t
      FROM generate_series(1, $2) g) s
"""


async def lay_out(conn: asyncpg.Connection, months: int) -> None:
    """Partitions as a year of rolls leaves them: the months before in `<table>_before`, then one a month up
    to those the migration made (from next month on)."""
    now = datetime.now(UTC)
    first = partitions.month_start(now, 1 - months)
    for table in ("messages", "message_events"):
        await conn.execute(f"DROP TABLE {table}_before")  # empty: migrated just now
        await conn.execute(
            f"CREATE TABLE {table}_before PARTITION OF {table} FOR VALUES FROM (MINVALUE) TO ('{first}')"
        )
        for n in range(months):
            start, end = partitions.month_start(first, n), partitions.month_start(first, n + 1)
            await conn.execute(
                f"CREATE TABLE {partitions.partition_name(table, start)} PARTITION OF {table} "
                f"FOR VALUES FROM ('{start}') TO ('{end}'){partitions.STORAGE.get(table, '')}"
            )


async def prepare(url: str, months: int, laid_out: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        if laid_out:
            await lay_out(conn, months)
            return
        # What the statements now need of 0019 and 0020; the plain table has no other change.
        await conn.execute(
            "CREATE TABLE message_keys (api_key_id uuid, idempotency_key text, message_id uuid NOT NULL, "
            "created_at timestamptz NOT NULL, PRIMARY KEY (api_key_id, idempotency_key))"
        )
        await conn.execute(
            "ALTER TABLE message_events ADD COLUMN phone_number_id text, ADD CONSTRAINT "
            "uq_message_events_phone_number_id UNIQUE (phone_number_id, message_id, status, at)"
        )
        config = db.alembic_config(url.replace("postgresql://", "postgresql+asyncpg://"))
        await conn.execute(ScriptDirectory.from_config(config).get_revision("0019").module.MADE_AFTER)
    finally:
        await conn.close()


async def send(
    url: str, key: uuid.UUID, finish: str, setup: str, sends: int, connections: int
) -> dict[str, float]:
    """INSERT_PENDING then FINISH per send, as the send path runs them; sends per second and latency."""
    pool = await asyncpg.create_pool(url, min_size=connections, max_size=connections)
    assert pool is not None
    latencies: list[float] = []

    async def one_connection(count: int) -> None:
        async with pool.acquire() as conn:
            await conn.execute(setup)
            record, answer = await conn.prepare(INSERT_PENDING.sql), await conn.prepare(finish)
            for _ in range(count):
                id = uuid_utils.uuid7()
                values = {
                    **SEND,
                    "id": id,
                    "api_key_id": key,
                    "idempotency_key": str(id),
                    "at": datetime.now(UTC),
                    "status": "accepted",
                    "graph_message_id": f"wamid.{id}",
                    "wa_id": "5511987654321",
                    "error": None,
                    "response_status": 200,
                    "response": orjson.dumps({"messages": [{"id": f"wamid.{id}"}]}).decode(),
                }
                start = time.perf_counter()
                await record.fetch(*(values[n] for n in INSERT_PENDING.names))
                assert await answer.fetch(*(values[n] for n in FINISH.names))
                latencies.append(time.perf_counter() - start)

    try:
        async with pool.acquire() as conn:
            await conn.execute("CHECKPOINT")
        start = time.perf_counter()
        await asyncio.gather(*(one_connection(sends // connections) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    finally:
        await pool.close()
    cuts = statistics.quantiles(latencies, n=100)
    return {"rate": len(latencies) / elapsed, "p50": cuts[49] * 1000, "p99": cuts[98] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--rows-per-month", type=int, default=200_000)
    parser.add_argument("--sends", type=int, default=40_000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}

    def measure(
        layout: str, url: str, key: uuid.UUID, finish: str = FINISH.sql, setup: str = "RESET plan_cache_mode"
    ) -> None:
        results[layout] = asyncio.run(send(url, key, finish, setup, args.sends, args.connections))

    with scratch("months", "0018") as plain, scratch("months", "head") as by_month:
        fill = FILL.format(id=V7), args.months * args.rows_per_month, args.months * 30.4 * 86400
        asyncio.run(prepare(plain, args.months, laid_out=False))
        asyncio.run(prepare(by_month, args.months, laid_out=True))
        plain_key, month_key = (asyncio.run(grow(url, *fill)) for url in (plain, by_month))
        measure("plain (before 0019)", plain, plain_key)
        by_months = f"by month, {args.months} partitions"
        measure(f"{by_months}: FINISH by id, every month's index probed (the service)", by_month, month_key)
        pruned = re.sub(
            r"WHERE id = (\$\d+)", r"WHERE id = \1 AND created_at >= message_made_after(\1)", FINISH.sql
        )
        measure(
            f"{by_months}: FINISH names the id's month (planned anew each run)", by_month, month_key, pruned
        )
        generic = "SET plan_cache_mode = force_generic_plan"
        measure(
            f"{by_months}: FINISH names the id's month, generic plans", by_month, month_key, pruned, generic
        )
        asyncio.run(  # 0019 and 0020 make them
            timed(
                plain,
                "DROP TABLE message_keys",
                "DROP FUNCTION message_made_after",
                "ALTER TABLE message_events DROP COLUMN phone_number_id",
            )
        )
        upgrades = {}
        for revision in ("0019", "0020"):
            start = time.perf_counter()
            migrate(plain, revision)
            upgrades[revision] = time.perf_counter() - start
        measure("just upgraded: every row in `messages_before`", plain, plain_key)
    rows = args.months * args.rows_per_month
    print(
        f"{args.sends:,} sends recorded and answered over {args.connections} connections into {rows:,} earlier "
        f"ones over {args.months} months (two events each)\n"
    )
    print("| messages | sends/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for layout, r in results.items():
        print(f"| {layout} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    print(
        f"\nupgrade of the plain database ({rows:,} sends, {2 * rows:,} events): 0018 → 0019 "
        f"{upgrades['0019']:.1f} s, 0019 → 0020 {upgrades['0020']:.1f} s"
    )


if __name__ == "__main__":
    main()
