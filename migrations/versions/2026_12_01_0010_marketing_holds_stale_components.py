"""marketing holds (Meta's 131049 / 130472 remembered per number and customer); stale template components

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 11:00:00

`marketing_holds`: while a hold runs the gate refuses that customer's marketing templates itself.
`templates.components_stale_since`: Meta said the template's components changed; its parameters are not
checked until the next sync brings the new ones.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "marketing_holds",
        sa.Column("phone_number_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("since", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("until", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_marketing_holds_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("phone_number_id", "customer_id", name=op.f("pk_marketing_holds")),
    )
    op.create_index(op.f("ix_marketing_holds_customer_id"), "marketing_holds", ["customer_id"], unique=False)
    op.add_column(
        "templates", sa.Column("components_stale_since", postgresql.TIMESTAMP(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("templates", "components_stale_since")
    op.drop_index(op.f("ix_marketing_holds_customer_id"), table_name="marketing_holds")
    op.drop_table("marketing_holds")
