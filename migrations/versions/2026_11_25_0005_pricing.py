"""pricing

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ESTIMATE_COLUMNS = (
    ("pricing_category", sa.Text()),
    ("market", sa.Text()),
    ("billable", sa.Boolean()),
    ("estimated_amount", sa.Numeric(18, 6)),
    ("currency", sa.String(length=3)),
    ("inside_csw", sa.Boolean()),
    ("inside_fep", sa.Boolean()),
)


def upgrade() -> None:
    for name, type_ in ESTIMATE_COLUMNS:
        op.add_column("messages", sa.Column(name, type_, nullable=True))
    op.create_index(
        "ix_messages_phone_number_id_created_at", "messages", ["phone_number_id", "created_at"], unique=False
    )
    op.create_table(
        "budgets",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("scope_id", sa.Text(), nullable=False),
        sa.Column("monthly_limit", sa.Numeric(18, 6), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("scope IN ('phone_number', 'api_key')", name=op.f("ck_budgets_scope")),
        sa.CheckConstraint("monthly_limit >= 0", name=op.f("ck_budgets_monthly_limit")),
        sa.PrimaryKeyConstraint("scope", "scope_id", name=op.f("pk_budgets")),
    )
    op.create_table(
        "budget_spend",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("scope_id", sa.Text(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("spent", sa.Numeric(18, 6), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("scope", "scope_id", "month", name=op.f("pk_budget_spend")),
    )


def downgrade() -> None:
    op.drop_table("budget_spend")
    op.drop_table("budgets")
    op.drop_index("ix_messages_phone_number_id_created_at", table_name="messages")
    for name, _ in reversed(ESTIMATE_COLUMNS):
        op.drop_column("messages", name)
