"""webhook fields: numbers' quality and messaging limit, accounts' restrictions and pricing, business
echoes; held_for_quality_assessment in the status order

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 11:00:00

`message_status_after` (0007) is replaced: held_for_quality_assessment (Meta holds a template send while it
judges the template) comes after accepted and before sent; sent, delivered, read or failed may follow it.
The rest of the rule is unchanged. src/window_gate/message/status.py holds the same rule in Python
(tests/message/test_status_order.py keeps them equal). Downgrading restores 0007's function; a message
then still `held_for_quality_assessment` stays so (final under the old rule) until set by hand.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUS_ORDER = """
CREATE OR REPLACE FUNCTION message_status_after(current text, updates text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  next text;
BEGIN
  FOREACH next IN ARRAY updates LOOP
    IF current IN ('pending', 'unknown', 'accepted')
       OR (current = 'held_for_quality_assessment' AND next IN ('sent', 'delivered', 'read', 'failed'))
       OR (current = 'sent' AND next IN ('delivered', 'read', 'failed'))
       OR (current = 'delivered' AND next = 'read') THEN
      current := next;
    END IF;
  END LOOP;
  RETURN current;
END
$$
"""
# 0007's function, word for word.
STATUS_ORDER_0007 = """
CREATE OR REPLACE FUNCTION message_status_after(current text, updates text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  next text;
BEGIN
  FOREACH next IN ARRAY updates LOOP
    IF current IN ('pending', 'unknown', 'accepted')
       OR (current = 'sent' AND next IN ('delivered', 'read', 'failed'))
       OR (current = 'delivered' AND next = 'read') THEN
      current := next;
    END IF;
  END LOOP;
  RETURN current;
END
$$
"""
TZ = sa.TIMESTAMP(timezone=True)
NUMBER_COLUMNS = (
    ("display_phone_number", sa.Text()),
    ("quality_event", sa.Text()),
    ("messaging_limit_tier", sa.Text()),
    ("quality_updated_at", TZ),
)


def upgrade() -> None:
    for name, type_ in NUMBER_COLUMNS:
        op.add_column("phone_numbers", sa.Column(name, type_, nullable=True))
    op.create_table(
        "business_accounts",
        sa.Column("waba_id", sa.Text(), nullable=False),
        sa.Column("restrictions", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("restrictions_at", TZ, nullable=True),
        sa.Column("ban_state", sa.Text(), nullable=True),
        sa.Column("ban_date", sa.Text(), nullable=True),
        sa.Column("ban_at", TZ, nullable=True),
        sa.Column(
            "volume_tiers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("auth_international", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("auth_international_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("waba_id", name=op.f("pk_business_accounts")),
    )
    op.create_table(
        "message_echoes",
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("phone_number_id", sa.Text(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=True),
        sa.Column("recipient_user_id", sa.Text(), nullable=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("sent_at", TZ, nullable=False),
        sa.Column("received_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_echoes")),
    )
    op.create_index(op.f("ix_message_echoes_received_at"), "message_echoes", ["received_at"], unique=False)
    op.execute(STATUS_ORDER)


def downgrade() -> None:
    op.execute(STATUS_ORDER_0007)
    op.drop_index(op.f("ix_message_echoes_received_at"), table_name="message_echoes")
    op.drop_table("message_echoes")
    op.drop_table("business_accounts")
    for name, _ in reversed(NUMBER_COLUMNS):
        op.drop_column("phone_numbers", name)
