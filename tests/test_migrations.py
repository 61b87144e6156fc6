"""Every migration is reversible: on a scratch database, each revision downgrades to exactly the schema
of the one before it and upgrades again to exactly its own; at head, the models and the schema agree."""

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from tests.conftest import scratch_database
from window_gate import db

pytestmark = pytest.mark.slow  # every migration, down and up again

Schema = dict[str, list[tuple[str, ...]]]
# What a migration can leave behind or forget; alembic's own bookkeeping table is not the schema.
CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
                  FROM information_schema.columns
                  WHERE table_schema = 'public' AND table_name <> 'alembic_version'""",
    "indexes": """SELECT tablename, indexname, indexdef FROM pg_indexes
                  WHERE schemaname = 'public' AND tablename <> 'alembic_version'""",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(c.oid)
                      FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                      WHERE n.nspname = 'public' AND conrelid::regclass::text <> 'alembic_version'""",
    "types": """SELECT typname, typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname = 'public' AND typtype IN ('e', 'd', 'c') AND typrelid = 0""",
    "functions": """SELECT proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p
                    JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'""",
}


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    """An empty database beside the test run's, dropped afterwards."""
    with scratch_database(database_url, "window_gate_migrations") as url:
        yield url


def schema(url: str) -> Schema:
    async def read() -> Schema:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return {part: sorted(tuple(r) for r in await conn.fetch(sql)) for part, sql in CATALOG.items()}
        finally:
            await conn.close()

    return asyncio.run(read())


def test_every_migration_downgrades_and_upgrades_again(scratch_url: str) -> None:
    config = db.alembic_config(scratch_url)
    revisions = [r.revision for r in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]
    assert revisions, "no migrations found"
    before = schema(scratch_url)
    for revision in revisions:
        command.upgrade(config, revision)
        after = schema(scratch_url)
        assert after != before, f"{revision} changed nothing"
        command.downgrade(config, "-1")
        assert schema(scratch_url) == before, f"downgrading {revision} did not restore the schema before it"
        command.upgrade(config, revision)
        assert schema(scratch_url) == after, f"{revision} upgraded again is not what it was"
        before = after

    command.downgrade(config, "base")  # all the way down from head, as an operator rolling back would
    command.upgrade(config, "head")
    assert schema(scratch_url) == before
    command.check(config)  # the models and the migrated schema agree (raises with the differences)
