"""The SQL convention (README, Development): hand-written SQL only for the measured hot statements, each a
`db.Statement`; everything else SQLAlchemy Core against models.py. Core fails at import when a column is
renamed; hand-written text would fail only when run, so every SQL text found in the package is prepared
against the migrated schema here."""

import importlib
import pkgutil
from collections.abc import AsyncIterator
from types import ModuleType

import asyncpg
import pytest
from sqlalchemy import TextClause

import window_gate
from window_gate.db import Statement

# Measured in bench/ (README, Performance): these stay hand-written on the hot pool's road.
HOT = {
    "window_gate.apikey.repository.BY_HASH",
    "window_gate.message.repository.FINISH",
    "window_gate.message.repository.INSERT_PENDING",
    # A held message released becomes the send on INSERT_PENDING's road (the hot pool): the same measure.
    "window_gate.message.repository.CLAIM_HELD",
    "window_gate.pricing.repository.RESERVE",
    # The relay's fan-out of what INGEST kept, written with it (bench/relay.py times the fan-out too).
    "window_gate.subscription.repository.FAN_OUT",
    "window_gate.webhook.repository.INGEST",
    "window_gate.window.repository.LOOKUP",
}


def sql_texts(package: ModuleType) -> dict[str, str]:
    """Every SQL text at module level in the package, by its dotted name, as asyncpg takes it: each
    `Statement`, and any `text()` (alone or in a tuple or list)."""
    found: dict[str, str] = {}
    within = pkgutil.walk_packages(getattr(package, "__path__", []), f"{package.__name__}.")
    modules = [package] + [importlib.import_module(m.name) for m in within]
    for module in modules:
        for name, value in vars(module).items():
            items = list(enumerate(value)) if isinstance(value, tuple | list) else [(None, value)]
            for index, item in items:
                key = f"{module.__name__}.{name}" + (f"[{index}]" if index is not None else "")
                if isinstance(item, Statement):
                    found[key] = item.sql
                elif isinstance(item, TextClause):
                    found[key] = Statement(item.text).sql
    return found


async def unpreparable(conn: asyncpg.Connection, texts: dict[str, str]) -> list[str]:
    """The texts PostgreSQL refuses to prepare (no such table or column, a type mismatch …), each with
    its name and PostgreSQL's reason."""
    refused = []
    for name, sql in sorted(texts.items()):
        try:
            await conn.prepare(sql)
        except asyncpg.PostgresError as exc:
            refused.append(f"{name}: {type(exc).__name__}: {exc}")
    return refused


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        yield conn
    finally:
        await conn.close()


async def test_every_sql_text_in_the_package_prepares_against_the_migrated_schema(
    conn: asyncpg.Connection,
) -> None:
    texts = sql_texts(window_gate)
    assert texts.keys() >= HOT, "the walk missed a hot statement"
    assert await unpreparable(conn, texts) == []


def test_hand_written_sql_only_for_the_measured_hot_statements() -> None:
    """A new text is a decision, measured first (bench/) and named here; else it is written with Core."""
    assert set(sql_texts(window_gate)) == HOT


async def test_a_statement_naming_a_renamed_column_is_refused_by_name(conn: asyncpg.Connection) -> None:
    module = ModuleType("window_gate.renamed")
    module.GOOD = Statement("SELECT key_hash FROM api_keys WHERE id = :id")  # type: ignore[attr-defined]
    module.RENAMED = (  # type: ignore[attr-defined]
        Statement("SELECT 1"),
        Statement("UPDATE windows SET last_inbound = :at WHERE customer_id = :customer_id"),
    )
    refused = await unpreparable(conn, sql_texts(module))
    assert len(refused) == 1
    assert refused[0].startswith("window_gate.renamed.RENAMED[1]: UndefinedColumnError:"), refused
    assert '"last_inbound"' in refused[0]
