"""History tables partitioned by month (PostgreSQL's native range partitioning on the row's time), so
retention drops a month's partition instead of deleting its rows one by one (dead tuples, vacuum, bloat).

Each partitioned table has a partition per calendar month (UTC) named `<table>_<yyyy>_<mm>`, the rows from
before it was partitioned in `<table>_before` (migration 0017), and a DEFAULT partition that catches a row
whose month has no partition yet (a clock far off, a roll that did not run) instead of failing the insert.
`roll`, run by the owning feature's hourly purge, keeps partitions ready MONTHS_AHEAD, moves what the
DEFAULT partition caught into its month's partition, and drops the partitions wholly past retention."""

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

# table → the column it is partitioned by
PARTITIONED = {
    "webhook_deliveries": "received_at",
    "relay_attempts": "at",
    "messages": "created_at",
    "message_events": "at",
}
# A partition's own storage: messages' pages keep 30 % free for status updates in place (migration 0008).
STORAGE = {"messages": " WITH (fillfactor = 70)"}
MONTHS_AHEAD = 2  # ready before they are needed: a roll may fail (lock timeout) and run again an hour later
LOCK_TIMEOUT = "5s"  # making or dropping a partition waits for the table's writers; it gives way instead
_BOUNDS = re.compile(r"FROM \((.+)\) TO \((.+)\)")
Range = tuple[datetime | None, datetime | None]  # None: MINVALUE or MAXVALUE


@dataclass(slots=True)
class Rolled:
    """What one roll did to one table."""

    made: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved: int = 0  # rows the DEFAULT partition held, now in their month's partition


def month_start(at: datetime, months: int = 0) -> datetime:
    """The first instant (UTC) of `at`'s month, `months` later."""
    index = at.astimezone(UTC).year * 12 + at.astimezone(UTC).month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(table: str, start: datetime) -> str:
    return f"{table}_{start:%Y_%m}"


def is_partition(name: str) -> bool:
    return any(re.fullmatch(rf"{table}_(before|default|\d{{4}}_\d{{2}})", name) for table in PARTITIONED)


async def roll(
    conn: AsyncConnection, table: str, keep: timedelta | None, now: datetime | None = None
) -> Rolled:
    """Partitions for this month and MONTHS_AHEAD more, and for any month the DEFAULT partition caught
    rows of (moved there); then drop every partition whose whole range is older than `keep`: a row is
    kept at least `keep`, and at most `keep` and a month (None: forever)."""
    now = now or datetime.now(UTC)
    column = PARTITIONED[table]
    rolled = Rolled()
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    caught = (
        await conn.execute(text(f"SELECT DISTINCT date_trunc('month', {column}, 'UTC') FROM {table}_default"))
    ).scalars()
    months = {month_start(now, n) for n in range(MONTHS_AHEAD + 1)} | {month_start(m) for m in caught}
    existing = await _partitions(conn, table)
    for start in sorted(months):
        name = partition_name(table, start)
        if any(
            (low is None or low <= start) and (high is None or start < high)
            for low, high in existing.values()
        ):
            continue
        end = month_start(start, 1)
        bounds = {"start": start, "end": end}
        # Made apart, filled from DEFAULT, then attached: attaching checks DEFAULT holds none of its rows.
        await conn.execute(text(f"CREATE TABLE {name} (LIKE {table}){STORAGE.get(table, '')}"))
        moved = await conn.execute(
            text(
                f"WITH m AS (DELETE FROM {table}_default WHERE {column} >= :start AND {column} < :end "
                f"RETURNING *) INSERT INTO {name} SELECT * FROM m"
            ),
            bounds,
        )
        await conn.execute(  # DDL takes no parameters: the bounds written out
            text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{start}') TO ('{end}')")
        )
        rolled.made.append(name)
        rolled.moved += moved.rowcount
    for name, (_, high) in existing.items():
        if keep is not None and high is not None and high <= now - keep:
            await conn.execute(text(f"DROP TABLE {name}"))
            rolled.dropped.append(name)
    if rolled.moved:
        log.warning("partition default held rows", extra={"table": table, "rows": rolled.moved})
    return rolled


async def _partitions(conn: AsyncConnection, table: str) -> dict[str, Range]:
    """Its partitions but DEFAULT, with the range of each."""
    rows = await conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:t AS regclass)"
        ),
        {"t": table},
    )
    found: dict[str, Range] = {}
    for name, bound in rows:
        if match := _BOUNDS.search(bound):
            low, high = (
                None if b in ("MINVALUE", "MAXVALUE") else datetime.fromisoformat(b.strip("'"))
                for b in match.groups()
            )
            found[name] = (low, high)
    return found
