"""Every SQL statement about estimates, budgets and the costs report."""

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

# Sends of one category from one number this calendar month that left (or may have): the `paid_after:N`
# cells of the billability matrix count these.
SENT_THIS_MONTH = text(
    """
SELECT count(*) FROM messages
WHERE phone_number_id = :phone_number_id AND pricing_category = :category
  AND created_at >= :month_start AND created_at < :month_end
  AND (graph_message_id IS NOT NULL OR status IN ('pending', 'unknown'))
"""
)
ENSURE_SPEND = text(
    "INSERT INTO budget_spend (scope, scope_id, month) VALUES (:scope, :scope_id, :month) "
    "ON CONFLICT (scope, scope_id, month) DO NOTHING"
)
# The row lock taken by this UPDATE is what makes budgets safe across replicas: a concurrent reservation
# waits for it, then PostgreSQL re-checks the WHERE clause against the committed `spent` (READ COMMITTED).
RESERVE = text(
    """
WITH budget AS (SELECT monthly_limit, currency FROM budgets WHERE scope = :scope AND scope_id = :scope_id)
UPDATE budget_spend s SET spent = s.spent + :amount, updated_at = now()
WHERE s.scope = :scope AND s.scope_id = :scope_id AND s.month = :month
  AND (NOT EXISTS (SELECT 1 FROM budget)
       OR EXISTS (SELECT 1 FROM budget b WHERE b.currency = :currency AND s.spent + :amount <= b.monthly_limit))
RETURNING s.spent
"""
)
RELEASE = text(
    "UPDATE budget_spend SET spent = GREATEST(spent - :amount, 0), updated_at = now() "
    "WHERE scope = :scope AND scope_id = :scope_id AND month = :month"
)
STANDING = text(
    """
SELECT b.monthly_limit, b.currency, COALESCE(s.spent, 0) AS spent
FROM budgets b
LEFT JOIN budget_spend s ON s.scope = b.scope AND s.scope_id = b.scope_id AND s.month = :month
WHERE b.scope = :scope AND b.scope_id = :scope_id
"""
)
PUT_BUDGET = text(
    """
INSERT INTO budgets (scope, scope_id, monthly_limit, currency) VALUES (:scope, :scope_id, :monthly_limit, :currency)
ON CONFLICT (scope, scope_id) DO UPDATE
SET monthly_limit = EXCLUDED.monthly_limit, currency = EXCLUDED.currency, updated_at = now()
"""
)
DELETE_BUDGET = text("DELETE FROM budgets WHERE scope = :scope AND scope_id = :scope_id RETURNING scope")
BUDGETS = text(
    """
SELECT b.scope, b.scope_id, b.monthly_limit, b.currency, b.updated_at, COALESCE(s.spent, 0) AS spent
FROM budgets b
LEFT JOIN budget_spend s ON s.scope = b.scope AND s.scope_id = b.scope_id AND s.month = :month
WHERE (CAST(:scope AS text) IS NULL OR b.scope = :scope) AND (CAST(:scope_id AS text) IS NULL OR b.scope_id = :scope_id)
  AND (CAST(:within AS text[]) IS NULL
       OR (b.scope = 'phone_number' AND b.scope_id = ANY(CAST(:within AS text[])))
       OR (b.scope = 'api_key' AND EXISTS (
             SELECT 1 FROM api_keys k WHERE k.id::text = b.scope_id
             AND cardinality(k.phone_number_ids) > 0 AND k.phone_number_ids <@ CAST(:within AS text[]))))
ORDER BY b.scope, b.scope_id
"""
)
API_KEY_EXISTS = text("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = CAST(:id AS uuid))")
API_KEY_NUMBERS = text("SELECT phone_number_ids FROM api_keys WHERE id = CAST(:id AS uuid)")

# The costs report: one SQL aggregate per (group, day, market, Meta's category, Meta's verdict), priced and
# summed per group by the service (Meta's verdict is priced with the rate card of that day).
GROUP_KEYS = {  # key, label, and the key's numbers (whom a limited caller may see named)
    "day": ("to_char((m.created_at AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD')", "NULL", "NULL"),
    "category": ("COALESCE(m.pricing_category, 'unknown')", "NULL", "NULL"),
    "market": ("COALESCE(m.market, 'unknown')", "NULL", "NULL"),
    "api_key": ("m.api_key_id::text", "k.name", "k.phone_number_ids"),
}
# Meta's word: `type` (regular = charged) since per-message pricing; `billable` before it (deprecated).
REPORTED_BILLABLE = (
    "CASE WHEN m.pricing->>'type' IS NOT NULL THEN m.pricing->>'type' = 'regular' "
    "ELSE (m.pricing->>'billable')::boolean END"
)
COSTS = """
SELECT {key} AS key, {label} AS label, {numbers} AS key_numbers, (m.created_at AT TIME ZONE 'UTC')::date AS day, m.market,
       m.pricing->>'category' AS reported_category, {reported_billable} AS reported_billable,
       count(*) AS messages,
       count(*) FILTER (WHERE m.billable IS NULL) AS not_estimated,
       count(*) FILTER (WHERE m.billable) AS estimated_billable,
       count(*) FILTER (WHERE NOT m.billable) AS estimated_free,
       COALESCE(sum(m.estimated_amount), 0) AS estimated_amount,
       count(*) FILTER (WHERE m.pricing IS NOT NULL) AS reported
FROM messages m LEFT JOIN api_keys k ON k.id = m.api_key_id
WHERE m.created_at >= :start AND m.created_at < :end
  AND (CAST(:phone_number_ids AS text[]) IS NULL OR m.phone_number_id = ANY(CAST(:phone_number_ids AS text[])))
  AND (m.graph_message_id IS NOT NULL OR m.status = 'unknown')
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""


@dataclass(frozen=True, slots=True)
class Standing:
    monthly_limit: Decimal
    currency: str
    spent: Decimal


async def sent_this_month(
    conn: AsyncConnection, phone_number_id: str, category: str, month_start: datetime, month_end: datetime
) -> int:
    params = {
        "phone_number_id": phone_number_id,
        "category": category,
        "month_start": month_start,
        "month_end": month_end,
    }
    return int((await conn.execute(SENT_THIS_MONTH, params)).scalar_one())


async def reserve(
    conn: AsyncConnection, scope: str, scope_id: str, month: date, amount: Decimal, currency: str
) -> Decimal | None:
    """Add `amount` to the month's spend unless that passes the scope's budget: the new spend, or None."""
    key = {"scope": scope, "scope_id": scope_id, "month": month}
    await conn.execute(ENSURE_SPEND, key)
    spent: Decimal | None = (
        await conn.execute(RESERVE, {**key, "amount": amount, "currency": currency})
    ).scalar_one_or_none()
    return spent


async def release(conn: AsyncConnection, scope: str, scope_id: str, month: date, amount: Decimal) -> None:
    await conn.execute(RELEASE, {"scope": scope, "scope_id": scope_id, "month": month, "amount": amount})


async def standing(conn: AsyncConnection, scope: str, scope_id: str, month: date) -> Standing | None:
    row = (await conn.execute(STANDING, {"scope": scope, "scope_id": scope_id, "month": month})).first()
    return Standing(row.monthly_limit, row.currency, row.spent) if row else None


async def put_budget(
    conn: AsyncConnection, scope: str, scope_id: str, monthly_limit: Decimal, currency: str
) -> None:
    await conn.execute(
        PUT_BUDGET,
        {"scope": scope, "scope_id": scope_id, "monthly_limit": monthly_limit, "currency": currency},
    )


async def delete_budget(conn: AsyncConnection, scope: str, scope_id: str) -> bool:
    return (await conn.execute(DELETE_BUDGET, {"scope": scope, "scope_id": scope_id})).first() is not None


async def budgets(
    conn: AsyncConnection,
    month: date,
    scope: str | None = None,
    scope_id: str | None = None,
    within: list[str] | None = None,
) -> list[Row[Any]]:
    """`within`: only the budgets of these numbers and of keys limited to some of them."""
    params = {"month": month, "scope": scope, "scope_id": scope_id, "within": within}
    return list(await conn.execute(BUDGETS, params))


async def api_key_exists(conn: AsyncConnection, api_key_id: str) -> bool:
    return bool((await conn.execute(API_KEY_EXISTS, {"id": api_key_id})).scalar_one())


async def api_key_numbers(conn: AsyncConnection, api_key_id: str) -> list[str] | None:
    """The key's phone numbers (empty: every number), or None when there is no such key."""
    numbers: list[str] | None = (await conn.execute(API_KEY_NUMBERS, {"id": api_key_id})).scalar()
    return numbers


async def costs(
    conn: AsyncConnection,
    group_by: str,
    start: datetime,
    end: datetime,
    phone_number_ids: list[str] | None,
) -> list[Row[Any]]:
    key, label, numbers = GROUP_KEYS[group_by]
    sql = text(COSTS.format(key=key, label=label, numbers=numbers, reported_billable=REPORTED_BILLABLE))
    return list(await conn.execute(sql, {"start": start, "end": end, "phone_number_ids": phone_number_ids}))
