"""continuations: a closed window becomes one template, and messages wait for the customer's reply

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 07:30:00

`continuations`: one wait per (number, customer) at a time (a partial unique index), its template and
state. `held_messages`: the messages waiting in it, in the order accepted. `phone_numbers` gains
`default_reengagement_template`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)
WAITING = "state IN ('sending', 'awaiting_reply')"
OPEN = "state IN ('sending', 'awaiting_reply', 'replied')"


def upgrade() -> None:
    op.add_column(
        "phone_numbers", sa.Column("default_reengagement_template", postgresql.JSONB(), nullable=True)
    )
    op.create_table(
        "continuations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("phone_number_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("template_message_id", sa.Uuid(), nullable=True),
        sa.Column("reason", postgresql.JSONB(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "state IN ('sending', 'awaiting_reply', 'replied', 'released', 'failed', 'expired', 'cancelled')",
            name=op.f("ck_continuations_state"),
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_continuations_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_continuations_api_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["template_message_id"],
            ["messages.id"],
            name=op.f("fk_continuations_template_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_continuations")),
    )
    op.create_index(op.f("ix_continuations_customer_id"), "continuations", ["customer_id"])
    op.create_index(
        "uq_continuations_waiting",
        "continuations",
        ["phone_number_id", "customer_id"],
        unique=True,
        postgresql_where=sa.text(WAITING),
    )
    op.create_index("ix_continuations_open", "continuations", ["state"], postgresql_where=sa.text(OPEN))
    op.create_table(
        "held_messages",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("continuation_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("hold_until", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_held_messages_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["continuation_id"],
            ["continuations.id"],
            name=op.f("fk_held_messages_continuation_id_continuations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_held_messages")),
    )
    op.create_index(
        "ix_held_messages_continuation_id_position", "held_messages", ["continuation_id", "position"]
    )
    op.create_index(op.f("ix_held_messages_hold_until"), "held_messages", ["hold_until"])


def downgrade() -> None:
    op.drop_table("held_messages")
    op.drop_table("continuations")
    op.drop_column("phone_numbers", "default_reengagement_template")
