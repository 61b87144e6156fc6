"""Alembic environment: async engine, one advisory lock so concurrent replicas migrate one at a time."""

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from window_gate.config import load_settings
from window_gate.db import database_url
from window_gate.models import Base
from window_gate.partitions import is_partition

MIGRATION_LOCK = 0x77_67_6D_69  # "wgmi": any constant shared by every replica
JOB_TABLES_PREFIX = "pgqueuer"


def include_name(name: str | None, type_: str, _: object) -> bool:
    """pgqueuer's tables (migration 0006) have no models: its own code is their source, not models.py; nor
    have the partitions of a partitioned table (partitions.py makes them)."""
    table = (type_ == "table" and name) or ""
    return not (table.startswith(JOB_TABLES_PREFIX) or is_partition(table))


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        include_name=include_name,
    )
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()


async def main() -> None:
    # The service passes its URL; the bare alembic CLI (CI's `alembic check`) reads the settings.
    url = context.config.get_main_option("sqlalchemy.url") or database_url(load_settings())
    engine = create_async_engine(url)
    try:  # a migration that stops (0014 without ENCRYPTION_KEY) leaves no connection behind
        async with engine.connect() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `window-gate migrate`")
asyncio.run(main())
