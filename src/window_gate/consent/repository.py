"""Every SQL statement about consent (marketing opt-outs)."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
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

# The customer's word as of now: the newest statement about any customer these spellings name (a BR
# number with and without its ninth digit may be two customers until Meta links them: one person).
CURRENT = text(
    """
SELECT c.customer_id, cu.wa_id, cu.user_id, c.opted_out, c.source, c.changed_at
FROM customer_aliases a
JOIN consents c ON c.customer_id = a.customer_id AND c.phone_number_id = :phone_number_id
  AND c.category = :category
JOIN customers cu ON cu.id = c.customer_id
WHERE a.alias = ANY(CAST(:aliases AS text[]))
ORDER BY c.changed_at DESC, c.opted_out DESC
LIMIT 1
"""
)
# Keyset pagination in primary-key order: (phone_number_id, customer_id) for one category.
OPTED_OUT = text(
    """
SELECT c.phone_number_id, c.customer_id, cu.wa_id, cu.user_id, c.opted_out, c.source, c.changed_at
FROM consents c
JOIN customers cu ON cu.id = c.customer_id
WHERE c.category = :category AND c.opted_out
  AND (CAST(:phone_number_ids AS text[]) IS NULL OR c.phone_number_id = ANY(CAST(:phone_number_ids AS text[])))
  AND (c.phone_number_id, c.customer_id) > (:after_phone_number_id, :after_customer_id)
ORDER BY c.phone_number_id, c.customer_id
LIMIT :limit
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


async def current(
    conn: AsyncConnection, phone_number_id: str, aliases: Sequence[str], category: str
) -> Row[Any] | None:
    """The newest statement about the customer these spellings name, with its wa_id and user_id."""
    params = {"phone_number_id": phone_number_id, "aliases": list(aliases), "category": category}
    return (await conn.execute(CURRENT, params)).first()


async def opted_out(
    conn: AsyncConnection,
    category: str,
    phone_number_ids: Sequence[str] | None,
    after: tuple[str, int] | None,
    limit: int,
) -> Sequence[Row[Any]]:
    """Customers currently opted out, in key order, after the given (phone_number_id, customer_id)."""
    params = {
        "category": category,
        "phone_number_ids": list(phone_number_ids) if phone_number_ids is not None else None,
        "after_phone_number_id": after[0] if after else "",
        "after_customer_id": after[1] if after else 0,
        "limit": limit,
    }
    return (await conn.execute(OPTED_OUT, params)).all()
