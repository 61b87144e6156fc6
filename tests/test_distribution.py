"""docs/scaling.md's plan for a distributed PostgreSQL (Citus) with phone_number_id as the distribution
column, checked against the models: Citus enforces a primary key or unique constraint of a distributed
table only when it contains the distribution column, and a foreign key between two distributed tables
only when both sides include it (co-located). Leading with it also makes a number's rows one index range.

Every table of the models is classified here, so a new table is a decision; every key of a distributed
table leads with phone_number_id (the last ones since migration 0020)."""

from sqlalchemy import ForeignKeyConstraint, Table, UniqueConstraint

from window_gate.models import Base

COLUMN = "phone_number_id"
# Hot tables, grown by traffic and read or written per number on the hot paths: distributed by COLUMN.
DISTRIBUTED = {
    "windows": "the window check and webhook ingest",
    "inbound_messages": "webhook ingest's dedupe of redeliveries",
    "message_echoes": "webhook ingest (coexistence echoes)",
    "messages": "every send, every status webhook",
    "message_events": "each message's status history",
    "consents": "marketing sends' opt-out check, ingest's keywords",
    "marketing_holds": "marketing sends",
    "window_alarms": "ingest moves them, jobs fire them",
    "continuations": "continue-the-conversation waits",
    "held_messages": "the messages waiting in them",
    "phone_numbers": "joined by the window check: co-located, one shard with the number's windows",
}
# Everything else, and why it is not distributed by phone_number_id.
NOT_DISTRIBUTED = {
    "api_keys": "reference table: small, read by every request on every node",
    "customers": "reference table: one person across all numbers (aliases, merges)",
    "customer_aliases": "reference table: resolves a spelling to a customer before any number is involved",
    "business_accounts": "reference table: per WABA, joined by the window check",
    "templates": "reference table: per WABA, read by template sends",
    "template_syncs": "reference table: per WABA",
    "budgets": "reference table: a few rows, per number or per API key",
    "budget_spend": "reference table for now: an API key's row is shared by all its numbers (docs/scaling.md)",
    "subscriptions": "reference table: a few rows, read by ingest on every node",
    "webhook_deliveries": "one delivery may carry several numbers: append-only, partitioned by month",
    "relay_deliveries": "per subscription, not per number: distributed by subscription_id",
    "relay_attempts": "co-located with relay_deliveries",
    "message_keys": "an Idempotency-Key is one per API key across its numbers: distributed by api_key_id",
    "relay_fanout": "one delivery may carry several numbers: co-located with webhook_deliveries",
    "ingest_pressure": "one row, the relay's signal: local to the coordinator",
}
TABLES = Base.metadata.tables


def keys(table: Table) -> list[tuple[str, tuple[str, ...]]]:
    """Its primary key, unique constraints and unique indexes (partial ones too), as (kind, columns)."""
    found = [("primary key", tuple(c.name for c in table.primary_key.columns))]
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            found.append(("unique", tuple(c.name for c in constraint.columns)))
        elif isinstance(constraint, ForeignKeyConstraint) and constraint.referred_table.name in DISTRIBUTED:
            kind = f"foreign key to {constraint.referred_table.name}"
            found.append((kind, tuple(c.name for c in constraint.columns)))
    found += [("unique", tuple(c.name for c in i.columns)) for i in table.indexes if i.unique]
    return found


def test_every_table_is_classified_once() -> None:
    assert not DISTRIBUTED.keys() & NOT_DISTRIBUTED.keys()
    assert DISTRIBUTED.keys() | NOT_DISTRIBUTED.keys() == TABLES.keys()


def test_the_keys_of_distributed_tables_lead_with_phone_number_id() -> None:
    offending = {
        (name, kind, columns)
        for name in DISTRIBUTED
        for kind, columns in keys(TABLES[name])
        if columns[0] != COLUMN
    }
    assert offending == set()


def test_reference_tables_have_no_foreign_key_to_a_distributed_table() -> None:
    """Citus refuses one (a reference table lives on every node; the row it names, on one)."""
    assert [
        (name, fk.referred_table.name)
        for name in NOT_DISTRIBUTED
        for fk in TABLES[name].foreign_key_constraints
        if fk.referred_table.name in DISTRIBUTED
    ] == []
