"""The conversation.watch chore's query on a grown `messages` table: it runs every second.

    ./dev run python -m bench.waits [--rows 2000000] [--waits 50] [--runs 100] [--runs-before 5]

A scratch database migrated to head, grown to `--rows` earlier sends with two events each (bench.ids),
then `--waits` waits awaiting a reply: half know their template send's id, half only the Idempotency-Key
it was sent with (a process died while Meta answered; message/held.py). Times message/repository.py's
OPEN_WAITS `--runs` times, and the join it replaced `--runs-before` times: an OR of the template's id and
its key, which no index serves since 0019 moved the keys out of `messages` into `message_keys`. Prints a
markdown table; drops the database.
"""

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg
from sqlalchemy import Text, and_, cast, func, or_, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.sql import Select

from bench.ids import FILL, V7, grow
from bench.partitions import scratch
from window_gate.message.repository import OPEN_WAITS, TEMPLATE_KEY_PREFIX, TEMPLATE_SEND
from window_gate.models import Continuation

BEFORE = (  # 0019's join (commit 1ae6ca7)
    select(*OPEN_WAITS.selected_columns)
    .select_from(Continuation)
    .outerjoin(
        TEMPLATE_SEND,
        or_(
            TEMPLATE_SEND.id == Continuation.template_message_id,
            and_(
                Continuation.template_message_id.is_(None),
                TEMPLATE_SEND.api_key_id == Continuation.api_key_id,
                TEMPLATE_SEND.idempotency_key
                == func.concat(TEMPLATE_KEY_PREFIX, cast(Continuation.id, Text)),
            ),
        ),
    )
    .where(Continuation.state.in_(("sending", "awaiting_reply", "replied")))
)
WAITS = """
WITH c AS (
  INSERT INTO customers (wa_id) SELECT '1666' || g FROM generate_series(1, $2) g RETURNING id
), w AS (
  INSERT INTO continuations (id, phone_number_id, customer_id, api_key_id, state, template_message_id)
  SELECT gen_random_uuid(), '1001', c.id, $1, 'awaiting_reply',
    CASE WHEN c.id % 2 = 0 THEN (SELECT id FROM messages WHERE phone_number_id = '1001' LIMIT 1) END
  FROM c RETURNING id, template_message_id
), t AS (
  INSERT INTO messages (id, api_key_id, idempotency_key, request_hash, phone_number_id, recipient_input, type,
                        body, status)
  SELECT gen_random_uuid(), $1, 'wg-continuation:' || w.id, repeat('0', 64), '1001', 'x', 'template', '{}',
    'accepted'
  FROM w WHERE template_message_id IS NULL RETURNING id, api_key_id, idempotency_key, created_at
)
INSERT INTO message_keys SELECT api_key_id, idempotency_key, id, created_at FROM t
"""


async def timed(url: str, query: Select[Any], runs: int) -> dict[str, float]:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
    latencies = []
    try:
        async with engine.connect() as conn:
            for _ in range(runs):
                start = time.perf_counter()
                found = (await conn.execute(query)).all()
                latencies.append(time.perf_counter() - start)
                assert all(row[4] is not None for row in found), "a wait without its template send"
    finally:
        await engine.dispose()
    ordered = sorted(latencies)
    return {
        "p50": statistics.median(ordered) * 1000,
        "max": ordered[-1] * 1000,
        "found": len(found),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--waits", type=int, default=50)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--runs-before", type=int, default=5)
    args = parser.parse_args()
    with scratch("waits", "head") as url:
        key = asyncio.run(grow(url, FILL.format(id=V7), args.rows))
        asyncio.run(add_waits(url, key, args.waits))
        now = asyncio.run(timed(url, OPEN_WAITS, args.runs))
        before = asyncio.run(timed(url, BEFORE, args.runs_before))
    print(f"{args.waits} waits awaiting a reply, {args.rows:,} earlier sends\n")
    print("| the chore's query | runs | p50 ms | max ms | waits read |\n|---|---|---|---|---|")
    for label, runs, r in (
        ("an OR of the template's id and its key (0019)", args.runs_before, before),
        ("by id, else by message_keys (now)", args.runs, now),
    ):
        print(f"| {label} | {runs} | {r['p50']:.2f} | {r['max']:.2f} | {r['found']:.0f} |")


async def add_waits(url: str, key: uuid.UUID, waits: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(WAITS, key, waits)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
