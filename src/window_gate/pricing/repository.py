"""Every SQL statement about estimates, budgets and the costs report."""

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Boolean,
    Date,
    Select,
    SQLColumnExpression,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.db import AnyRow, Rows, Statement
from window_gate.models import ApiKey, Budget, BudgetSpend, Message


@dataclass(frozen=True, slots=True)
class Refusal:
    """The budget a reservation would pass, and its spend before it."""

    scope: str
    scope_id: str
    monthly_limit: Decimal
    currency: str
    spent: Decimal


# The statements of every paid send, built once (SQLAlchemy then only keys its cache per call).
# Sends of one category from one number this calendar month that left (or may have): the `paid_after:N`
# cells of the billability matrix count these, up to N (a busy number's month is not counted whole on
# every reply).
SENT_THIS_MONTH = select(func.count()).select_from(
    select(literal(1))
    .where(
        Message.phone_number_id == bindparam("phone_number_id"),
        Message.pricing_category == bindparam("category"),
        Message.created_at >= bindparam("month_start"),
        Message.created_at < bindparam("month_end"),
        or_(Message.graph_message_id.is_not(None), Message.status.in_(("pending", "unknown"))),
    )
    .limit(bindparam("cap"))
    .subquery()
)
# Both scopes' spend (the phone number's first, then the key's: one lock order, so reservations never
# deadlock) in one statement, on either road (the hot pool for a paid send, bench/). Each row is created at
# `amount` or grown by it unless that passes its scope's budget; ON CONFLICT DO UPDATE locks the row and
# re-checks against its committed `spent` (READ COMMITTED), which makes budgets safe across replicas. The
# row returned, if any, is the first budget refused (its spend as this statement found it): then the one
# scope may have grown while the other was refused, and the caller's transaction must roll back.
RESERVE = Statement(
    """
WITH budget AS (
  SELECT scope, scope_id, monthly_limit, currency FROM budgets
  WHERE (scope = 'phone_number' AND scope_id = :phone_number_id) OR (scope = 'api_key' AND scope_id = :api_key_id)
), r AS (
  INSERT INTO budget_spend AS s (scope, scope_id, month, spent)
  SELECT w.scope, w.scope_id, :month, :amount
  FROM (VALUES (1, 'phone_number', CAST(:phone_number_id AS text)), (2, 'api_key', CAST(:api_key_id AS text)))
       AS w (turn, scope, scope_id)
  WHERE NOT EXISTS (SELECT FROM budget b WHERE (b.scope, b.scope_id) = (w.scope, w.scope_id)
                    AND (b.currency <> :currency OR b.monthly_limit < :amount))
  ORDER BY w.turn
  ON CONFLICT (scope, scope_id, month) DO UPDATE SET spent = s.spent + excluded.spent, updated_at = now()
  WHERE NOT EXISTS (SELECT FROM budget b WHERE (b.scope, b.scope_id) = (s.scope, s.scope_id)
                    AND (b.currency <> :currency OR b.monthly_limit < s.spent + excluded.spent))
  RETURNING s.scope
)
SELECT b.scope, b.scope_id, b.monthly_limit, b.currency, COALESCE(sp.spent, 0) AS spent
FROM budget b
LEFT JOIN budget_spend sp ON (sp.scope, sp.scope_id, sp.month) = (b.scope, b.scope_id, :month)
WHERE b.scope NOT IN (SELECT scope FROM r)
ORDER BY b.scope = 'api_key'
LIMIT 1
"""
)
# Bound names differ from the columns': SQLAlchemy keeps those for an UPDATE's SET.
_AMOUNT = bindparam("amount", type_=BudgetSpend.spent.type)
_SPEND = and_(
    BudgetSpend.scope == bindparam("in_scope"),
    BudgetSpend.scope_id == bindparam("in_scope_id"),
    BudgetSpend.month == bindparam("in_month"),
)
RELEASE = (
    update(BudgetSpend)
    .where(_SPEND)
    .values(spent=func.greatest(BudgetSpend.spent - _AMOUNT, 0), updated_at=func.now())
)


async def sent_this_month(
    conn: AsyncConnection,
    phone_number_id: str,
    category: str,
    month_start: datetime,
    month_end: datetime,
    cap: int,
) -> int:
    """How many, counting no further than `cap`."""
    params = {
        "phone_number_id": phone_number_id,
        "category": category,
        "month_start": month_start,
        "month_end": month_end,
        "cap": cap,
    }
    return int((await conn.execute(SENT_THIS_MONTH, params)).scalar_one())


async def reserve(
    conn: AsyncConnection | Rows,
    *,
    phone_number_id: str,
    api_key_id: str,
    month: date,
    amount: Decimal,
    currency: str,
) -> Refusal | None:
    """Add `amount` to the month's spend of both scopes, or the first budget that refuses it."""
    params = {
        "phone_number_id": phone_number_id,
        "api_key_id": api_key_id,
        "month": month,
        "amount": amount,
        "currency": currency,
    }
    row = await RESERVE.run(conn, params)
    return Refusal(**row) if row else None


async def release(conn: AsyncConnection, scope: str, scope_id: str, month: date, amount: Decimal) -> None:
    key = {"in_scope": scope, "in_scope_id": scope_id, "in_month": month}
    await conn.execute(RELEASE, {**key, "amount": amount})


def _budgets(month: date) -> Select[*tuple[Any, ...]]:
    spent = func.coalesce(BudgetSpend.spent, 0).label("spent")
    this_month = and_(
        BudgetSpend.scope == Budget.scope, BudgetSpend.scope_id == Budget.scope_id, BudgetSpend.month == month
    )
    return select(Budget.monthly_limit, Budget.currency, spent).outerjoin(BudgetSpend, this_month)


async def put_budget(
    conn: AsyncConnection, scope: str, scope_id: str, monthly_limit: Decimal, currency: str
) -> None:
    upsert = insert(Budget).values(
        scope=scope, scope_id=scope_id, monthly_limit=monthly_limit, currency=currency
    )
    await conn.execute(
        upsert.on_conflict_do_update(
            index_elements=[Budget.scope, Budget.scope_id],
            set_={
                "monthly_limit": upsert.excluded.monthly_limit,
                "currency": upsert.excluded.currency,
                "updated_at": func.now(),
            },
        )
    )


async def delete_budget(conn: AsyncConnection, scope: str, scope_id: str) -> bool:
    query = delete(Budget).where(Budget.scope == scope, Budget.scope_id == scope_id).returning(Budget.scope)
    return (await conn.execute(query)).first() is not None


async def budgets(
    conn: AsyncConnection,
    month: date,
    scope: str | None = None,
    scope_id: str | None = None,
    within: list[str] | None = None,
) -> list[AnyRow]:
    """`within`: only the budgets of these numbers and of keys limited to some of them."""
    query = (
        _budgets(month)
        .add_columns(Budget.scope, Budget.scope_id, Budget.updated_at)
        .order_by(Budget.scope, Budget.scope_id)
    )
    if scope is not None:
        query = query.where(Budget.scope == scope)
    if scope_id is not None:
        query = query.where(Budget.scope_id == scope_id)
    if within is not None:
        numbers = literal(within, ARRAY(Text))
        limited_key = select(ApiKey.id).where(
            cast(ApiKey.id, Text) == Budget.scope_id,
            func.cardinality(ApiKey.phone_number_ids) > 0,
            ApiKey.phone_number_ids.contained_by(numbers),
        )
        query = query.where(
            or_(
                and_(Budget.scope == "phone_number", Budget.scope_id == any_(numbers)),
                and_(Budget.scope == "api_key", exists(limited_key)),
            )
        )
    return list(await conn.execute(query))


async def api_key_exists(conn: AsyncConnection, api_key_id: str) -> bool:
    query = select(exists().where(ApiKey.id == UUID(api_key_id)))
    return bool((await conn.execute(query)).scalar_one())


async def api_key_numbers(conn: AsyncConnection, api_key_id: str) -> list[str] | None:
    """The key's phone numbers (empty: every number), or None when there is no such key."""
    query = select(ApiKey.phone_number_ids).where(ApiKey.id == UUID(api_key_id))
    numbers: list[str] | None = (await conn.execute(query)).scalar()
    return numbers


def _group_key(group_by: str) -> tuple[SQLColumnExpression[Any], ...]:
    """The group's key, its label, and the key's numbers (whom a limited caller may see named)."""
    if group_by == "api_key":
        return cast(Message.api_key_id, Text), ApiKey.name, ApiKey.phone_number_ids
    if group_by == "day":
        day = func.to_char(cast(func.timezone("UTC", Message.created_at), Date), "YYYY-MM-DD")
        key: SQLColumnExpression[Any] = day
    elif group_by == "category":
        key = func.coalesce(Message.pricing_category, "unknown")
    elif group_by == "market":
        key = func.coalesce(Message.market, "unknown")
    else:
        raise ValueError(f"no grouping {group_by!r}")
    return key, cast(null(), Text), cast(null(), ARRAY(Text))


async def costs(
    conn: AsyncConnection,
    group_by: str,
    start: datetime,
    end: datetime,
    phone_number_ids: list[str] | None,
) -> list[AnyRow]:
    """One aggregate per (group, day, market, Meta's category, Meta's verdict), priced and summed per group
    by the service (Meta's verdict is priced with the rate card of that day)."""
    key, label, numbers = _group_key(group_by)
    # Meta's word: `type` (regular = charged) since per-message pricing; `billable` before it (deprecated).
    reported_type = Message.pricing["type"].astext
    reported_billable = case(
        (reported_type.is_not(None), reported_type == "regular"),
        else_=cast(Message.pricing["billable"].astext, Boolean),
    )
    # Each send's group first, aggregated outside: GROUP BY then names columns, not expressions.
    sends = (
        select(
            key.label("key"),
            label.label("label"),
            numbers.label("key_numbers"),
            cast(func.timezone("UTC", Message.created_at), Date).label("day"),
            Message.market,
            Message.pricing["category"].astext.label("reported_category"),
            reported_billable.label("reported_billable"),
            Message.billable,
            Message.estimated_amount,
            Message.pricing,
        )
        .outerjoin(ApiKey, ApiKey.id == Message.api_key_id)
        .where(
            Message.created_at >= start,
            Message.created_at < end,
            or_(Message.graph_message_id.is_not(None), Message.status == "unknown"),
        )
    )
    if phone_number_ids is not None:
        sends = sends.where(Message.phone_number_id == any_(literal(phone_number_ids, ARRAY(Text))))
    m = sends.subquery("m")
    groups = (
        m.c.key,
        m.c.label,
        m.c.key_numbers,
        m.c.day,
        m.c.market,
        m.c.reported_category,
        m.c.reported_billable,
    )
    query = select(
        *groups,
        func.count().label("messages"),
        func.count().filter(m.c.billable.is_(None)).label("not_estimated"),
        func.count().filter(m.c.billable).label("estimated_billable"),
        func.count().filter(not_(m.c.billable)).label("estimated_free"),
        func.coalesce(func.sum(m.c.estimated_amount), 0).label("estimated_amount"),
        func.count().filter(m.c.pricing.is_not(None)).label("reported"),
    ).group_by(*groups)
    return list(await conn.execute(query))
