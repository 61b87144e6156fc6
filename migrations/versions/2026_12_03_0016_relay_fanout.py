"""relay_fanout: webhook ingest writes one outbox row per delivery; the relay fans it out in the background

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 10:00:00

Ingest wrote one relay_deliveries row per subscriber (three indexes each) in its own statement; it now
writes one row here (one index), and `relay.dispatch` makes the per-subscriber rows, held back while ingest
is under load. Rows the previous version left in relay_deliveries are sent as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relay_fanout",
        sa.Column("webhook_delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("phone_number_ids", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("webhook_delivery_id", name=op.f("pk_relay_fanout")),
    )


def downgrade() -> None:
    # Not yet fanned out: made per subscriber as the previous version's ingest did.
    op.execute(
        "INSERT INTO relay_deliveries (subscription_id, event_id, event_type, webhook_delivery_id, "
        "created_at, next_attempt_at, retry_from) "
        "SELECT s.id, f.event_id, 'meta.webhook', f.webhook_delivery_id, f.created_at, f.created_at, "
        "f.created_at FROM relay_fanout f JOIN subscriptions s ON 'meta.webhook' = ANY(s.events) "
        "AND (s.phone_number_ids IS NULL OR s.phone_number_ids && f.phone_number_ids) "
        "ORDER BY f.webhook_delivery_id, s.id"
    )
    op.drop_table("relay_fanout")
