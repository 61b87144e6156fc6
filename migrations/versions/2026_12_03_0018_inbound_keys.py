"""inbound_messages and message_echoes keyed by (phone_number_id, message_id)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 23:00:00

The first of the keys docs/scaling.md lists for a distributed PostgreSQL: a table distributed by
phone_number_id can enforce a key only when the key contains it. Nothing changes for callers: Meta's
message ids are unique per number anyway. Rebuilds each primary key's index while holding the table
(these tables keep WEBHOOK_RETENTION_DAYS of messages). The downgrade keeps one row per message id.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("inbound_messages", "message_echoes")


def upgrade() -> None:
    for table in TABLES:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, "
            f"ADD CONSTRAINT pk_{table} PRIMARY KEY (phone_number_id, message_id)"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(
            f"DELETE FROM {table} a USING {table} b "
            "WHERE a.message_id = b.message_id AND a.phone_number_id > b.phone_number_id"
        )
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, ADD CONSTRAINT pk_{table} PRIMARY KEY (message_id)"
        )
