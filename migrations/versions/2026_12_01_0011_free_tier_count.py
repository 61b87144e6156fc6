"""free tier count: a number's sends of one category in a month, found by an index

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 11:55:00

The reported 2026-10-01 pricing (on by default since issue 11) lets 1,000 service messages a month per
number go free, so a free-form send's estimate counts the number's service sends of the month, up to the
tier (pricing/repository.py: SENT_THIS_MONTH). Through the (phone_number_id, created_at) index that count
read every send of the month, templates included (bench/: a number with a month of history). This index
reaches the category's sends directly; once the tier is used up the process stops counting
(pricing/service.py: FreeTiers).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_phone_number_id_pricing_category_created_at",
        "messages",
        ["phone_number_id", "pricing_category", "created_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_messages_phone_number_id_pricing_category_created_at", table_name="messages")
