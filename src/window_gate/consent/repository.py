"""Every SQL statement about consent (marketing opt-outs)."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Deliveries arrive out of order: only a newer statement replaces an older one.
RECORD = text(
    """
INSERT INTO consents AS c (phone_number_id, customer_id, category, opted_out, source, changed_at)
SELECT DISTINCT ON (phone_number_id, customer_id, category) *
FROM unnest(CAST(:phone_number_ids AS text[]), CAST(:customer_ids AS bigint[]), CAST(:categories AS text[]),
            CAST(:opted_out AS bool[]), CAST(:sources AS text[]), CAST(:changed_at AS timestamptz[]))
  AS u(phone_number_id, customer_id, category, opted_out, source, changed_at)
ORDER BY phone_number_id, customer_id, category, changed_at DESC
ON CONFLICT (phone_number_id, customer_id, category) DO UPDATE
SET opted_out = EXCLUDED.opted_out, source = EXCLUDED.source, changed_at = EXCLUDED.changed_at
WHERE EXCLUDED.changed_at >= c.changed_at
"""
)


@dataclass(frozen=True, slots=True)
class Statement:
    phone_number_id: str
    customer_id: int
    category: str
    opted_out: bool
    at: datetime
    source: str


async def record(conn: AsyncConnection, statements: Sequence[Statement]) -> None:
    if statements:
        await conn.execute(
            RECORD,
            {
                "phone_number_ids": [s.phone_number_id for s in statements],
                "customer_ids": [s.customer_id for s in statements],
                "categories": [s.category for s in statements],
                "opted_out": [s.opted_out for s in statements],
                "sources": [s.source for s in statements],
                "changed_at": [s.at for s in statements],
            },
        )
