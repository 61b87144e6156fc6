"""status updates in place: no index names messages.status, and messages' pages keep room

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 08:40:00

Meta sends three statuses per message; each moves the message's `status` (and pricing, error, updated_at).
With `status` indexed, every such update wrote a new entry in each of the table's six indexes. Without it,
and with 30 % of each page left free, the update stays on its page and touches no index (a HOT update):
bench/ measured PostgreSQL's CPU per 100 statuses 13.6 → 7.7 ms. The chore that expires stale `pending`
sends (message/repository.py: expire_pending) finds them through a partial index of the sends still without
Meta's answer instead. The fillfactor applies to pages written from now on (a `VACUUM FULL messages`
rewrites the existing ones, under an exclusive lock).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_unanswered", "messages", ["created_at"], postgresql_where=sa.text("response IS NULL")
    )
    op.drop_index("ix_messages_status", table_name="messages")
    op.execute("ALTER TABLE messages SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE messages RESET (fillfactor)")
    op.create_index("ix_messages_status", "messages", ["status"])
    op.drop_index("ix_messages_unanswered", table_name="messages")
