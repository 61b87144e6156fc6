"""Partitions benchmark (migration 0017, src/window_gate/partitions.py): what the upgrade costs on a grown
archive, and retention by dropping a month's partition against the row-by-row DELETE it replaced.

    ./dev run python -m bench.partitions [--rows 1000000] [--body-bytes 1500]

Two scratch databases on the local PostgreSQL, each migrated to 0016 and filled with the same archive of
raw webhook deliveries (`--rows`, spread evenly over the last 60 days, bodies the size of a Meta message
delivery). Then, in the first: the old purge (DELETE of those past 30 days, as `webhook.purge` did) timed,
then a VACUUM of what it left. In the second: the upgrade to head timed (attach, primary key built), then a
roll as it will run once the archive is past retention (the `_before` partition dropped). Prints a markdown
table; drops the databases.
"""

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from window_gate import db, partitions

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FILL = (
    "INSERT INTO webhook_deliveries (received_at, body) "
    "SELECT now() - make_interval(secs => 60 * 86400.0 * g / $1), convert_to(repeat('x', $2), 'UTF8') "
    "FROM generate_series(1, $1) g"
)


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def migrate(url: str, revision: str) -> None:
    command.upgrade(db.alembic_config(url.replace("postgresql://", "postgresql+asyncpg://")), revision)


@contextlib.contextmanager
def scratch(bench: str, revision: str) -> Iterator[str]:
    """A database of the bench's own on the local PostgreSQL, migrated to `revision`: its URL (asyncpg's),
    dropped after."""
    name = f"wg_bench_{bench}_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
        migrate(url, revision)
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def timed(url: str, *statements: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        start = time.perf_counter()
        for statement in statements:
            await conn.execute(statement)
        return time.perf_counter() - start
    finally:
        await conn.close()


async def fill(url: str, rows: int, body_bytes: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(FILL, rows, body_bytes)
        await conn.execute("VACUUM ANALYZE webhook_deliveries")
    finally:
        await conn.close()


async def roll_later(url: str) -> tuple[float, partitions.Rolled]:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        start = time.perf_counter()
        async with engine.begin() as conn:
            later = datetime.now(UTC) + timedelta(days=62)  # the whole archive past 30 days
            rolled = await partitions.roll(conn, "webhook_deliveries", timedelta(days=30), now=later)
        return time.perf_counter() - start, rolled
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--body-bytes", type=int, default=1500)
    args = parser.parse_args()
    with scratch("partitions", "0016") as old, scratch("partitions", "0016") as new:
        for url in (old, new):
            asyncio.run(fill(url, args.rows, args.body_bytes))
        delete = asyncio.run(
            timed(old, "DELETE FROM webhook_deliveries WHERE received_at < now() - interval '30 days'")
        )
        vacuum = asyncio.run(timed(old, "VACUUM webhook_deliveries"))
        start = time.perf_counter()
        migrate(new, "head")
        upgrade = time.perf_counter() - start
        drop, rolled = asyncio.run(roll_later(new))
    print(f"{args.rows:,} raw deliveries of {args.body_bytes} bytes over 60 days\n")
    print("| step | seconds |\n|---|---|")
    print(f"| old purge: DELETE of the {args.rows // 2:,} past 30 days | {delete:.2f} |")
    print(f"| … then the VACUUM it leaves to autovacuum | {vacuum:.2f} |")
    print(f"| upgrade to 0017 (attach, primary key built over {args.rows:,} rows) | {upgrade:.2f} |")
    print(f"| roll once the archive is past retention (dropped: {', '.join(rolled.dropped)}) | {drop:.2f} |")


if __name__ == "__main__":
    main()
