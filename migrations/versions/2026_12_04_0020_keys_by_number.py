"""every hot table keyed by phone_number_id first: messages, message_events, continuations, held_messages

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04 21:00:00

The last of the keys docs/scaling.md lists for a distributed PostgreSQL (tests/test_distribution.py): a
table distributed by phone_number_id can enforce a key, or a foreign key to another, only when it holds
that column. Nothing changes for callers.
- messages: primary key (phone_number_id, id, created_at), and an index on id for the lookups that name
  no number (GET /v1/messages/{id}, Meta's answer to a send, a held message's end);
- message_events and held_messages gain a phone_number_id column, filled from their send and their wait;
  events whose send is no longer there (0019 dropped the foreign key that would have deleted them) go: no
  lookup reached them;
- continuations: primary key (phone_number_id, id), an index on id; held_messages' foreign key to its
  wait names both columns.
The keys are dropped first, so that filling message_events' column (every row written anew) updates no
index; then each key is built over the rows while the tables are held (timed by bench/months.py). The fill
leaves message_events' old row versions for (auto)vacuum.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = {  # each table's primary key, before and after
    "before": {
        "messages": "(id, created_at)",
        "message_events": "(id, at)",
        "continuations": "(id)",
        "held_messages": "(message_id)",
    },
    "after": {
        "messages": "(phone_number_id, id, created_at)",
        "message_events": "(phone_number_id, id, at)",
        "continuations": "(phone_number_id, id)",
        "held_messages": "(phone_number_id, message_id)",
    },
}
EVENTS_ONCE = {  # webhook ingest and the send path insert events ON CONFLICT of this key
    "before": ("uq_message_events_message_id", "(message_id, status, at)"),
    "after": ("uq_message_events_phone_number_id", "(phone_number_id, message_id, status, at)"),
}
HELD_IN = {  # held_messages' foreign key to its wait
    "before": ("fk_held_messages_continuation_id_continuations", "(continuation_id)", "(id)"),
    "after": (
        "fk_held_messages_phone_number_id_continuations",
        "(phone_number_id, continuation_id)",
        "(phone_number_id, id)",
    ),
}
BY_ID = {"messages": "id", "continuations": "id", "held_messages": "message_id"}  # ix_<table>_<column>
FILLED = {  # the new column, from the row it belongs to
    "message_events": "UPDATE message_events e SET phone_number_id = m.phone_number_id FROM messages m "
    "WHERE m.id = e.message_id",
    "held_messages": "UPDATE held_messages h SET phone_number_id = c.phone_number_id FROM continuations c "
    "WHERE c.id = h.continuation_id",
}


def drop_keys(when: str) -> None:
    """The keys as they are `when` ("before" or "after"), dropped: a fill writes no index."""
    op.execute(f"ALTER TABLE held_messages DROP CONSTRAINT {HELD_IN[when][0]}")
    op.execute(f"ALTER TABLE message_events DROP CONSTRAINT {EVENTS_ONCE[when][0]}")
    for table in KEYS[when]:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}")


def add_keys(when: str) -> None:
    for table, key in KEYS[when].items():
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY {key}")
    name, columns = EVENTS_ONCE[when]
    op.execute(f"ALTER TABLE message_events ADD CONSTRAINT {name} UNIQUE {columns}")
    name, columns, referred = HELD_IN[when]
    op.execute(
        f"ALTER TABLE held_messages ADD CONSTRAINT {name} FOREIGN KEY {columns} "
        f"REFERENCES continuations {referred} ON DELETE CASCADE"
    )


def upgrade() -> None:
    drop_keys("before")
    for table, fill in FILLED.items():
        op.execute(f"ALTER TABLE {table} ADD COLUMN phone_number_id text")
        op.execute(fill)
        op.execute(f"DELETE FROM {table} WHERE phone_number_id IS NULL")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN phone_number_id SET NOT NULL")
    add_keys("after")
    for table, column in BY_ID.items():
        op.execute(f"CREATE INDEX ix_{table}_{column} ON {table} ({column})")


def downgrade() -> None:
    for table, column in BY_ID.items():
        op.execute(f"DROP INDEX ix_{table}_{column}")
    drop_keys("after")
    for table in FILLED:
        op.execute(f"ALTER TABLE {table} DROP COLUMN phone_number_id")
    add_keys("before")
