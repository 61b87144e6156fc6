"""subscriptions: Meta's webhooks relayed and the gate's own events, through an outbox

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 23:00:00

`subscriptions`: who wants which events (a URL, its secret, optionally some numbers). `relay_deliveries`:
one row per event per subscriber, written in the transaction that caused the event (meta.webhook: in
webhook ingest's statement, pointing at the kept bytes), sent by a job. `relay_attempts`: each attempt.
`window_alarms`: when a window's `window.expiring` and `window.closed` come due (kept only for the kinds
some subscription wants). `gate_event(...)`: the JSON of every gate event, for the statements that emit
them (the one shape, subscription/rules.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("phone_number_ids", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_table(
        "relay_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("webhook_delivery_id", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("retry_from", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(webhook_delivery_id IS NULL) <> (body IS NULL)", name=op.f("ck_relay_deliveries_one_body")
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'failed', 'delivered', 'dead')", name=op.f("ck_relay_deliveries_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_deliveries")),
    )
    op.create_index(
        "ix_relay_deliveries_due",
        "relay_deliveries",
        ["subscription_id", "next_attempt_at", "id"],
        postgresql_where=sa.text("state IN ('pending', 'failed')"),
    )
    op.create_index("ix_relay_deliveries_subscription_id_id", "relay_deliveries", ["subscription_id", "id"])
    op.create_table(
        "relay_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["relay_deliveries.id"],
            name=op.f("fk_relay_attempts_delivery_id_relay_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_attempts")),
    )
    op.create_index(op.f("ix_relay_attempts_delivery_id"), "relay_attempts", ["delivery_id"])
    op.create_table(
        "window_alarms",
        sa.Column("phone_number_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("last_inbound_at", TZ, nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_window_alarms_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("phone_number_id", "customer_id", "kind", name=op.f("pk_window_alarms")),
    )
    op.create_index(op.f("ix_window_alarms_customer_id"), "window_alarms", ["customer_id"])
    op.create_index(op.f("ix_window_alarms_due_at"), "window_alarms", ["due_at"])
    op.execute(GATE_TIME)
    op.execute(GATE_EVENT)


GATE_TIME = """
CREATE FUNCTION gate_time(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
"""
GATE_EVENT = """
CREATE FUNCTION gate_event(id uuid, type text, at timestamptz, phone_number_id text, wa_id text, user_id text,
                           data jsonb) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN convert_to(json_build_object(
  'id', id, 'type', type, 'occurred_at', gate_time(at), 'phone_number_id', phone_number_id,
  'customer', CASE WHEN wa_id IS NOT NULL OR user_id IS NOT NULL
                   THEN json_build_object('wa_id', wa_id, 'user_id', user_id) END,
  'data', data)::text, 'UTF8')
"""


def downgrade() -> None:
    op.execute("DROP FUNCTION gate_event(uuid, text, timestamptz, text, text, text, jsonb)")
    op.execute("DROP FUNCTION gate_time(timestamptz)")
    op.drop_table("window_alarms")
    op.drop_table("relay_attempts")
    op.drop_table("relay_deliveries")
    op.drop_table("subscriptions")
