"""ingest_pressure: webhook ingest under load says so, and the relay holds back (RELAY_YIELD_SECONDS)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 07:00:00

One unlogged row: nothing in it needs to survive a crash (empty reads as "not under load").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_pressure",
        sa.Column("id", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("busy_until", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_ingest_pressure_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_pressure")),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("ingest_pressure")
