"""templates

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("phone_numbers", sa.Column("waba_id", sa.Text(), nullable=True))
    op.create_table(
        "templates",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("waba_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("language", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("previous_category", sa.Text(), nullable=True),
        sa.Column("parameter_format", sa.Text(), server_default=sa.text("'POSITIONAL'"), nullable=False),
        sa.Column("components", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("quality", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("meta_error_code", sa.Integer(), nullable=True),
        sa.Column("meta_error_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("synced_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
    )
    op.create_index(
        "ix_templates_waba_id_name_language", "templates", ["waba_id", "name", "language"], unique=False
    )
    op.create_table(
        "template_syncs",
        sa.Column("waba_id", sa.Text(), nullable=False),
        sa.Column("synced_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("templates", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("waba_id", name=op.f("pk_template_syncs")),
    )


def downgrade() -> None:
    op.drop_table("template_syncs")
    op.drop_index("ix_templates_waba_id_name_language", table_name="templates")
    op.drop_table("templates")
    op.drop_column("phone_numbers", "waba_id")
