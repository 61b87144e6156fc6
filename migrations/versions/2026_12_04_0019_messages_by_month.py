"""messages and message_events partitioned by month; Idempotency-Keys in a table of their own

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 17:00:00

As 0017 did for the raw deliveries: each table becomes a partitioned table (RANGE on its time column) and
the existing table is attached, not copied, as `<table>_before`, covering everything up to the first month
boundary after its newest row. Its indexes are renamed and attached to the partitioned table's; the primary
key gains the time column (PostgreSQL requires it of a partitioned table's keys), and its index is built
over the existing rows while the table is held (seconds per million sends). The next two months get their
partitions here (messages' with the fillfactor of 0008); `window_gate.partitions` keeps them coming.

What a partitioned table cannot enforce moves or goes:
- the unique (api_key_id, idempotency_key) becomes the table `message_keys` (the key, its send and the
  send's created_at), filled here from the sends that carry one;
- graph_message_id is indexed, no longer unique (Meta's ids are unique; the gate only looks them up);
- message_events gains a unique key, `(message_id, status, at)`, in place of its index on message_id:
  webhook ingest's check for a status already recorded could miss one recorded by a concurrent group (a
  statement sees what was committed when it began), so a redelivered status was sometimes recorded twice;
  duplicates left by it are deleted here;
- the foreign keys of message_events, held_messages and continuations to messages are dropped (a key to a
  partitioned table must name its time column too): an event goes with its month, a held message or a wait
  is gone long before its send's month passes retention. The downgrade puts them back, after deleting
  the rows that name a send no longer there (or forgetting the template's id), as the keys would have.

A lookup by id names the send's month with the function `message_made_after(id)`, made here (below).

The downgrade copies every row back into plain tables (minutes on a large history).
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTITIONED_BY = {"messages": "created_at", "message_events": "at"}
INDEXES = {  # made on the partitioned table; the old table's of the same name are attached to them
    "messages": {
        "ix_messages_created_at": "(created_at)",
        "ix_messages_phone_number_id_created_at": "(phone_number_id, created_at)",
        "ix_messages_phone_number_id_pricing_category_created_at": "(phone_number_id, pricing_category, created_at)",
        "ix_messages_unanswered": "(created_at) WHERE response IS NULL",
    },
    "message_events": {},
}
# An event once per (message, status, at): webhook ingest inserts ON CONFLICT DO NOTHING, so two groups
# holding copies of one status (Meta delivers again; two lanes or replicas at once) record it once. It also
# serves the lookups by message_id, which had this index (the downgrade's).
EVENTS_ONCE = "uq_message_events_message_id", "UNIQUE (message_id, status, at)"
EVENTS_BY_MESSAGE = "ix_message_events_message_id", "(message_id)"
DUPLICATE_EVENTS = (
    "DELETE FROM message_events a USING message_events b "
    "WHERE a.message_id = b.message_id AND a.status = b.status AND a.at = b.at AND a.id > b.id"
)
UNIQUE = {
    "uq_messages_api_key_id": "(api_key_id, idempotency_key)",
    "uq_messages_graph_message_id": "(graph_message_id)",
}
FOREIGN_KEYS = {  # to messages.id, as 0002 and 0013 made them; the downgrade first does what they would have
    "message_events": (
        "fk_message_events_message_id_messages",
        "FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE CASCADE",
        "DELETE FROM message_events r WHERE NOT EXISTS (SELECT FROM messages m WHERE m.id = r.message_id)",
    ),
    "held_messages": (
        "fk_held_messages_message_id_messages",
        "FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE CASCADE",
        "DELETE FROM held_messages r WHERE NOT EXISTS (SELECT FROM messages m WHERE m.id = r.message_id)",
    ),
    "continuations": (
        "fk_continuations_template_message_id_messages",
        "FOREIGN KEY (template_message_id) REFERENCES messages (id) ON DELETE SET NULL",
        "UPDATE continuations r SET template_message_id = NULL "
        "WHERE NOT EXISTS (SELECT FROM messages m WHERE m.id = r.template_message_id)",
    ),
}
API_KEY = "fk_messages_api_key_id_api_keys", "FOREIGN KEY (api_key_id) REFERENCES api_keys (id)"
FILLFACTOR = {"messages": " WITH (fillfactor = 70)", "message_events": ""}
MONTHS_MADE = 2


def month_start(at: datetime, months: int = 0) -> datetime:
    index = at.astimezone(UTC).year * 12 + at.astimezone(UTC).month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def literal(at: datetime) -> str:
    """A bound as DDL takes it: written out (statements like ATTACH PARTITION take no parameters)."""
    return f"'{at.isoformat()}'"


# A lookup by id names the send's month with this: a UUIDv7 carries the millisecond it was made (its first
# 48 bits); a day of slack for clocks (the id is the replica's, created_at the database's); an id from before
# UUIDv7, nothing. Written in epoch seconds, so that it is immutable (no time zone in the arithmetic).
MADE_AFTER = """
CREATE FUNCTION message_made_after(id uuid) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN substr(id::text, 15, 1) = '7'
    THEN to_timestamp(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint / 1000.0 - 86400)
    ELSE '-infinity' END
$$
"""


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(MADE_AFTER)
    for table, (name, _, _) in FOREIGN_KEYS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    op.execute(
        "CREATE TABLE message_keys (api_key_id uuid NOT NULL, idempotency_key text NOT NULL, "
        "message_id uuid NOT NULL, created_at timestamptz NOT NULL, "
        "CONSTRAINT pk_message_keys PRIMARY KEY (api_key_id, idempotency_key))"
    )
    op.execute(
        "INSERT INTO message_keys SELECT api_key_id, idempotency_key, id, created_at FROM messages "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.execute(f"ALTER TABLE messages {', '.join(f'DROP CONSTRAINT {name}' for name in UNIQUE)}")
    for table, column in PARTITIONED_BY.items():
        before = f"{table}_before"
        newest = bind.execute(sa.text(f"SELECT greatest(max({column}), now()) FROM {table}")).scalar_one()
        bound = month_start(newest, 1)
        op.execute(f"ALTER TABLE {table} RENAME TO {before}")
        op.execute(f"ALTER TABLE {before} DROP CONSTRAINT pk_{table}")
        for index in INDEXES[table]:
            op.execute(f"ALTER INDEX {index} RENAME TO {index}_before")
        op.execute(f"ALTER TABLE {before} ADD CONSTRAINT {before}_range CHECK ({column} < {literal(bound)})")
        keys = f"CONSTRAINT pk_{table} PRIMARY KEY (id, {column})"
        if table == "message_events":
            following = bind.execute(sa.text(f"SELECT nextval('{table}_id_seq')")).scalar_one()
            op.execute(f"ALTER TABLE {before} ALTER COLUMN id DROP IDENTITY")
            op.execute(f"DROP INDEX {EVENTS_BY_MESSAGE[0]}")
            op.execute(DUPLICATE_EVENTS.replace("message_events", before))  # a race of old ingest left them
            keys += f", CONSTRAINT {EVENTS_ONCE[0]} {EVENTS_ONCE[1]}"
        op.execute(
            f"CREATE TABLE {table} (LIKE {before} INCLUDING DEFAULTS, {keys}) PARTITION BY RANGE ({column})"
        )
        if table == "message_events":
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY "
                f"(START WITH {int(following)})"
            )
        else:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {API_KEY[0]} {API_KEY[1]}")
            op.execute("CREATE INDEX ix_messages_graph_message_id ON messages (graph_message_id)")
        for index, columns in INDEXES[table].items():
            op.execute(f"CREATE INDEX {index} ON {table} {columns}")
        op.execute(
            f"ALTER TABLE {table} ATTACH PARTITION {before} FOR VALUES FROM (MINVALUE) TO ({literal(bound)})"
        )
        op.execute(f"ALTER TABLE {before} DROP CONSTRAINT {before}_range")
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        for n in range(MONTHS_MADE):
            start, end = month_start(bound, n), month_start(bound, n + 1)
            op.execute(
                f"CREATE TABLE {table}_{start:%Y_%m} PARTITION OF {table} "
                f"FOR VALUES FROM ({literal(start)}) TO ({literal(end)}){FILLFACTOR[table]}"
            )


def downgrade() -> None:
    bind = op.get_bind()
    for table in PARTITIONED_BY:
        plain = f"{table}_plain"
        op.execute(f"CREATE TABLE {plain} (LIKE {table} INCLUDING DEFAULTS){FILLFACTOR[table]}")
        op.execute(f"INSERT INTO {plain} SELECT * FROM {table} ORDER BY id")
        if table == "message_events":
            following = bind.execute(sa.text(f"SELECT nextval('{table}_id_seq')")).scalar_one()
        op.execute(f"DROP TABLE {table}")  # with its partitions
        op.execute(f"ALTER TABLE {plain} RENAME TO {table}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
        if table == "message_events":
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY "
                f"(START WITH {int(following)})"
            )
            op.execute(f"CREATE INDEX {EVENTS_BY_MESSAGE[0]} ON {table} {EVENTS_BY_MESSAGE[1]}")
        else:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {API_KEY[0]} {API_KEY[1]}")
            for name, columns in UNIQUE.items():
                op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE {columns}")
        for index, columns in INDEXES[table].items():
            op.execute(f"CREATE INDEX {index} ON {table} {columns}")
    for table, (name, definition, orphans) in FOREIGN_KEYS.items():
        op.execute(orphans)  # an event, a held message or a wait whose send's month is gone
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    op.execute("DROP TABLE message_keys")
    op.execute("DROP FUNCTION message_made_after(uuid)")
