"""Cost estimates, budgets and the costs report: the rules in rules.py applied to what the database knows.

The send path (message/service.py) calls `estimate_send`, then, in the transaction that records the send,
`repository.insert_pending` (with `estimate_columns`) → `reserve`; and `release` when the send surely did
not leave. A budget is a monthly ceiling on the gate's own estimates, reserved before the send
leaves, so concurrent sends from any number of replicas cannot pass it together.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from window_gate import metrics
from window_gate.apikey.rules import Caller
from window_gate.db import Rows
from window_gate.errors import BudgetExceeded, Forbidden, MarketingUnavailable, NotFound, ValidationFailed
from window_gate.pricing import repository
from window_gate.pricing.rules import (
    OTHER,
    REPORTED_CATEGORIES,
    Category,
    Estimate,
    Tables,
    estimate,
    list_rate,
    marketing_restriction,
    message_category,
    place,
    utc_day,
)
from window_gate.pricing.schemas import (
    BudgetOut,
    BudgetsOut,
    CostGroupOut,
    CostsOut,
    EstimateOut,
    GroupBy,
    Scope,
)
from window_gate.window.rule import WindowState
from window_gate.window.schemas import WindowOut

MAX_REPORT_DAYS = 366
MICRO = Decimal("0.000001")  # the precision money is stored with (Numeric(18, 6))
OTHER_KEYS = "other_keys"  # the costs group of the keys a limited key does not reach


def month_of(at: datetime, zone: tzinfo = UTC) -> date:
    """Budgets and free tiers count calendar months in UTC. Meta counts its free tier in the business
    account's time zone; `zone` is there for a number whose time zone is configured (none can be yet)."""
    local = at.astimezone(zone)
    return date(local.year, local.month, 1)


def month_bounds(at: datetime, zone: tzinfo = UTC) -> tuple[datetime, datetime]:
    """The first instant of the month of `at` in `zone`, and of the next month."""
    month = month_of(at, zone)
    return _midnight(month, zone), _midnight(_next_month(month), zone)


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _midnight(day: date, zone: tzinfo = UTC) -> datetime:
    return datetime.combine(day, time(), zone)


# ---------------------------------------------------------------------------------------------------------
# Estimates


def window_flags(window: WindowOut, at: datetime) -> tuple[bool, bool]:
    """(inside_csw, inside_fep) for pricing, from the window the send was decided on.

    Inside the safety margin (`closing`) counts as outside: Meta's clock may already have closed the
    window, and an estimate that errs should err towards paid (budgets stay safe). The first business reply
    within 24 h of a Click-to-WhatsApp referral starts the free-entry-point window, so it is free too."""
    inside_csw = window.state is WindowState.OPEN
    fep = window.free_entry_point
    inside_fep = fep is not None and (
        fep.active or (fep.started_at is None and inside_csw and at < fep.reply_by)
    )
    return inside_csw, inside_fep


class FreeTiers:
    """The months whose free tier a number has used up, as this process has seen them. Within a month the
    count only grows: once it reaches the tier, later sends of that month need not ask the database (a
    busy number's free-form reply then costs no extra round trip). One per process, made by the lifespan."""

    def __init__(self) -> None:
        self.used_up: set[tuple[str, str, datetime]] = set()  # (phone_number_id, category, month start)


async def estimate_send(
    engine: AsyncEngine,
    tables: Tables,
    tiers: FreeTiers,
    *,
    phone_number_id: str,
    category: str | None,
    recipient: str,
    window: WindowOut,
    at: datetime,
) -> Estimate:
    """The estimate of one send: `category` is the template's (MARKETING/UTILITY/AUTHENTICATION) or None
    for free-form; `recipient` its wa_id, phone number or BSUID. Reads the database only when the matrix
    has a monthly free tier for this case (the reported 2026-10 service rule)."""
    [one] = await estimate_sends(
        engine, tables, tiers, phone_number_id=phone_number_id, sends=[(category, recipient, window)], at=at
    )
    return one


async def estimate_sends(
    engine: AsyncEngine,
    tables: Tables,
    tiers: FreeTiers,
    *,
    phone_number_id: str,
    sends: Sequence[tuple[str | None, str, WindowOut]],
    at: datetime,
) -> list[Estimate]:
    """The estimates of sends of one number made together (a release round, message/held.py), in order:
    each (category, recipient, window) as in `estimate_send`. A monthly free tier is counted once for them
    all: each send then counts the ones before it as sent."""
    start, end = month_bounds(at)
    sent_before: dict[Category, int] = {}
    estimates = []
    for category, recipient, window in sends:
        inside_csw, inside_fep = window_flags(window, at)
        kind = message_category(category)
        cell = tables.matrix.row(kind, utc_day(at)).cells[place(inside_csw=inside_csw, inside_fep=inside_fep)]
        sent = 0
        if cell.kind == "paid_after":
            if kind not in sent_before:
                sent_before[kind] = await _sent_this_month(
                    engine, tiers, phone_number_id, kind, start, end, cell.free_per_month
                )
            sent = sent_before[kind]
            sent_before[kind] = min(sent + 1, cell.free_per_month)
        estimates.append(
            estimate(
                tables,
                category=category,
                recipient=recipient,
                inside_csw=inside_csw,
                inside_fep=inside_fep,
                at=at,
                sent_this_month=sent,
            )
        )
    return estimates


async def _sent_this_month(
    engine: AsyncEngine,
    tiers: FreeTiers,
    phone_number_id: str,
    kind: Category,
    start: datetime,
    end: datetime,
    free: int,
) -> int:
    """Sends of this kind this month, counted up to the free tier (`free`); a tier used up is
    remembered (FreeTiers) and not counted again."""
    month = (phone_number_id, kind.value, start)
    if month in tiers.used_up:
        return free
    async with engine.connect() as conn:
        sent = await repository.sent_this_month(conn, phone_number_id, kind.value, start, end, free)
    if sent >= free:
        tiers.used_up.add(month)
    return sent


def check_marketing_delivered(tables: Tables, *, recipient: str, at: datetime) -> None:
    """Raise MarketingUnavailable (409) when Meta does not deliver marketing templates to the recipient's
    country on this day (marketing_restrictions.csv): refused before it is recorded or costs anything."""
    found = marketing_restriction(tables, recipient, at)
    if found is None:
        return
    market, restriction = found
    raise MarketingUnavailable(
        f"Meta does not deliver marketing templates to {market.country or restriction.country} numbers "
        f"(since {restriction.effective_from}); nothing was sent",
        country=restriction.country,
        effective_from=restriction.effective_from.isoformat(),
        effective_to=restriction.effective_to.isoformat() if restriction.effective_to else None,
        hint="utility and authentication templates, and free-form replies inside the window, still reach them",
    )


def estimate_out(est: Estimate) -> EstimateOut:
    return EstimateOut.model_validate(est.as_json())


def estimate_columns(est: Estimate) -> dict[str, Any]:
    """The estimate as the send's record stores it (messages.pricing_category … inside_fep)."""
    return {
        "pricing_category": est.category.value,
        "market": est.market,
        "billable": est.billable,
        "estimated_amount": est.amount,
        "currency": est.currency,
        "inside_csw": est.inside_csw,
        "inside_fep": est.inside_fep,
    }


# ---------------------------------------------------------------------------------------------------------
# Budgets


async def reserve(
    conn: AsyncConnection | Rows,
    *,
    phone_number_id: str,
    api_key_id: str,
    amount: Decimal,
    currency: str,
    at: datetime,
) -> None:
    """Count `amount` against this month's spend of the phone number and of the API key, or raise
    BudgetExceeded (402): then the caller's transaction must roll back (leaving its block does). Safe
    across replicas: each scope's spend row stays locked until that transaction ends, so end it promptly.
    Free sends (amount 0) reserve nothing and are never refused."""
    if amount <= 0:
        return
    month = month_of(at)
    refused = await repository.reserve(
        conn,
        phone_number_id=phone_number_id,
        api_key_id=api_key_id,
        month=month,
        amount=amount,
        currency=currency,
    )
    if refused is None:
        return
    if refused.currency != currency:
        detail = (
            f"the {refused.scope} budget of {refused.scope_id} is in {refused.currency} but estimates are "
            f"in {currency}: set the budget again in {currency}"
        )
    else:
        detail = (
            f"this send (about {amount} {currency}) would take the {refused.scope} budget of "
            f"{refused.scope_id} past {refused.monthly_limit} {currency} for {month:%Y-%m} "
            f"(spent so far {refused.spent}); nothing was sent"
        )
    metrics.BUDGET_REFUSALS.labels(refused.scope).inc()
    raise BudgetExceeded(
        detail,
        scope=refused.scope,
        scope_id=refused.scope_id,
        limit=str(refused.monthly_limit),
        spent=str(refused.spent),
        amount=str(amount),
        currency=refused.currency,
        month=month.isoformat(),
    )


async def fits(
    conn: Rows, *, phone_number_id: str, api_key_id: str, amount: Decimal, currency: str, at: datetime
) -> bool:
    """`reserve` for several sends at once (a release round, message/service.py): True when their total
    is counted; False when a budget refuses it, then the caller's transaction must roll back, and each
    send may still be reserved alone. A refusal here is not counted as one."""
    refused = await repository.reserve(
        conn,
        phone_number_id=phone_number_id,
        api_key_id=api_key_id,
        month=month_of(at),
        amount=amount,
        currency=currency,
    )
    return refused is None


async def release(
    conn: AsyncConnection, *, phone_number_id: str, api_key_id: str, amount: Decimal, at: datetime
) -> None:
    """Give back a reservation whose send surely did not leave. `at` is the reservation's own time, so
    the right month is credited even across midnight on the 1st."""
    if amount <= 0:
        return
    month = month_of(at)
    for scope, scope_id in ((Scope.PHONE_NUMBER, phone_number_id), (Scope.API_KEY, api_key_id)):
        await repository.release(conn, scope.value, scope_id, month, amount)


async def _in_reach(conn: AsyncConnection, caller: Caller, scope: Scope, scope_id: str) -> str:
    """The budget's scope id (a key's id normalised) once the caller may set or remove it: a number it
    may use, or a key whose numbers it reaches. A limited caller gets 403 for a key that does not exist
    too, so it learns nothing about keys outside its reach."""
    if scope is Scope.PHONE_NUMBER:
        caller.require_number(scope_id)
        return scope_id
    try:
        scope_id = str(UUID(scope_id))
    except ValueError:
        raise ValidationFailed("an api_key budget is keyed by the key's id (a UUID)") from None
    if caller.phone_number_ids:
        numbers = await repository.api_key_numbers(conn, scope_id)
        if numbers is None or not caller.reaches(numbers):
            raise Forbidden(
                f"this key may not budget API key {scope_id}: only keys limited to some of its own numbers",
                scope_id=scope_id,
            )
    return scope_id


async def set_budget(
    conn: AsyncConnection,
    tables: Tables,
    caller: Caller,
    scope: Scope,
    scope_id: str,
    monthly_limit: Decimal,
    currency: str,
    at: datetime,
) -> BudgetOut:
    if currency != tables.card.currency:
        raise ValidationFailed(
            f"budgets are in the rate card's currency, {tables.card.currency}",
            currency=currency,
            rate_card_currency=tables.card.currency,
        )
    scope_id = await _in_reach(conn, caller, scope, scope_id)
    if scope is Scope.API_KEY and not await repository.api_key_exists(conn, scope_id):
        raise NotFound(f"no API key {scope_id}")
    await repository.put_budget(conn, scope.value, scope_id, monthly_limit, currency)
    [row] = await repository.budgets(conn, month_of(at), scope.value, scope_id)
    return _budget_out(row, month_of(at))


async def list_budgets(conn: AsyncConnection, caller: Caller, at: datetime) -> BudgetsOut:
    """Every budget; for a limited caller, those it could set."""
    month = month_of(at)
    rows = await repository.budgets(conn, month, within=sorted(caller.phone_number_ids) or None)
    return BudgetsOut(budgets=[_budget_out(row, month) for row in rows])


async def delete_budget(conn: AsyncConnection, caller: Caller, scope: Scope, scope_id: str) -> None:
    scope_id = await _in_reach(conn, caller, scope, scope_id)
    if not await repository.delete_budget(conn, scope.value, scope_id):
        raise NotFound(f"no {scope.value} budget for {scope_id}")


def _budget_out(row: Row[Any], month: date) -> BudgetOut:
    return BudgetOut(
        scope=Scope(row.scope),
        scope_id=row.scope_id,
        monthly_limit=row.monthly_limit,
        currency=row.currency,
        month=month,
        spent=Decimal(row.spent).quantize(MICRO),
        remaining=max(row.monthly_limit - row.spent, Decimal(0)).quantize(MICRO),
        updated_at=row.updated_at,
    )


# ---------------------------------------------------------------------------------------------------------
# The costs report


@dataclass
class _Group:
    key: str
    label: str | None
    messages: int = 0
    not_estimated: int = 0
    estimated_billable: int = 0
    estimated_amount: Decimal = Decimal(0)
    sent_free: int = 0
    reported: int = 0
    reported_billable: int = 0
    reported_free: int = 0
    reported_amount: Decimal = Decimal(0)
    by_category: Counter[str] = field(default_factory=Counter)

    def add(self, row: Row[Any], reported_amount: Decimal) -> None:
        self.messages += row.messages
        self.not_estimated += row.not_estimated
        self.estimated_billable += row.estimated_billable
        self.estimated_amount += row.estimated_amount
        self.sent_free += row.estimated_free
        self.reported += row.reported
        if row.reported_billable is True:
            self.reported_billable += row.reported
            self.by_category[row.reported_category or "unknown"] += row.reported
            self.reported_amount += reported_amount
        elif row.reported_billable is False:
            self.reported_free += row.reported

    def out(self) -> CostGroupOut:
        return CostGroupOut(
            key=self.key,
            label=self.label,
            messages=self.messages,
            not_estimated=self.not_estimated,
            estimated_billable=self.estimated_billable,
            estimated_amount=self.estimated_amount.quantize(MICRO),
            sent_free=self.sent_free,
            reported=self.reported,
            reported_billable=self.reported_billable,
            reported_free=self.reported_free,
            reported_amount=self.reported_amount.quantize(MICRO),
            reported_billable_by_category=dict(sorted(self.by_category.items())),
        )


def report_period(from_date: date | None, to_date: date | None, now: datetime) -> tuple[date, date]:
    """Defaults: the current calendar month (UTC) up to today."""
    today = now.astimezone(UTC).date()
    start, end = from_date or today.replace(day=1), to_date or today
    if end == date.max:  # the report counts up to the next midnight, which Python's dates lack
        raise ValidationFailed(f"`to` must be before {date.max.isoformat()}")
    if start > end:
        raise ValidationFailed("`from` is after `to`", **{"from": start.isoformat(), "to": end.isoformat()})
    if (end - start).days >= MAX_REPORT_DAYS:
        raise ValidationFailed(f"a report covers at most {MAX_REPORT_DAYS} days")
    return start, end


async def costs(
    conn: AsyncConnection,
    tables: Tables,
    caller: Caller,
    *,
    phone_number_id: str | None,
    phone_number_ids: list[str] | None,
    from_date: date,
    to_date: date,
    group_by: GroupBy,
) -> CostsOut:
    """Estimated and Meta-reported totals of the sends that left between two days (UTC, inclusive). By
    API key, the keys the caller does not reach are one group without id or name."""
    rows = await repository.costs(
        conn, group_by.value, _midnight(from_date), _midnight(to_date + timedelta(days=1)), phone_number_ids
    )
    groups: dict[str, _Group] = {}
    total = _Group("total", None)
    for row in rows:
        amount = _reported_amount(tables, row) if row.reported_billable is True else Decimal(0)
        key, label = row.key, row.label
        if group_by is GroupBy.API_KEY and not caller.reaches(row.key_numbers or ()):
            key, label = OTHER_KEYS, None
        groups.setdefault(key, _Group(key, label)).add(row, amount)
        total.add(row, amount)
    return CostsOut(
        phone_number_id=phone_number_id,
        from_date=from_date,
        to_date=to_date,
        group_by=group_by,
        currency=tables.card.currency,
        rate_card=tables.card.sources,
        groups=[groups[key].out() for key in sorted(groups)],
        totals=total.out(),
    )


def _reported_amount(tables: Tables, row: Row[Any]) -> Decimal:
    """Meta says it charges these: at the card's rate for the category Meta reported, on the day sent."""
    category = REPORTED_CATEGORIES.get(str(row.reported_category or "").lower())
    if category is None:
        return Decimal(0)
    rate = list_rate(tables, row.market or OTHER, category, row.day)
    return (rate or Decimal(0)) * int(row.reported)
