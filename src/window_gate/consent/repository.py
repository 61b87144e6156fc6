"""Every SQL statement about consent (marketing opt-outs) and Meta's holds on a customer's marketing."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Integer, Text, and_, any_, func, literal, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.db import AnyRow
from window_gate.models import TZ, Consent, Customer, CustomerAlias, MarketingHold


@dataclass(frozen=True, slots=True)
class Statement:
    phone_number_id: str
    customer_id: int
    category: str
    opted_out: bool
    at: datetime
    source: str


async def record(conn: AsyncConnection, statements: Sequence[Statement]) -> None:
    if not statements:
        return
    u = (
        func.unnest(
            literal([s.phone_number_id for s in statements], ARRAY(Text)),
            literal([s.customer_id for s in statements], ARRAY(BigInteger)),
            literal([s.category for s in statements], ARRAY(Text)),
            literal([s.opted_out for s in statements], ARRAY(Boolean)),
            literal([s.source for s in statements], ARRAY(Text)),
            literal([s.at for s in statements], ARRAY(TZ)),
        )
        .table_valued("phone_number_id", "customer_id", "category", "opted_out", "source", "changed_at")
        .render_derived(name="u")
    )
    key = (u.c.phone_number_id, u.c.customer_id, u.c.category)
    newest = select(*u.c).ext(distinct_on(*key)).order_by(*key, u.c.changed_at.desc())
    upsert = insert(Consent).from_select(list(u.c.keys()), newest)
    # Deliveries arrive out of order: only a newer statement replaces an older one.
    await conn.execute(
        upsert.on_conflict_do_update(
            index_elements=[Consent.phone_number_id, Consent.customer_id, Consent.category],
            set_={
                "opted_out": upsert.excluded.opted_out,
                "source": upsert.excluded.source,
                "changed_at": upsert.excluded.changed_at,
            },
            where=upsert.excluded.changed_at >= Consent.changed_at,
        )
    )


async def current(
    conn: AsyncConnection, phone_number_id: str, aliases: Sequence[str], category: str
) -> AnyRow | None:
    """The newest statement about the customer these spellings name, with its wa_id and user_id."""
    # The customer's word as of now: the newest statement about any customer these spellings name (a BR
    # number with and without its ninth digit may be two customers until Meta links them: one person).
    query = (
        select(
            Consent.customer_id,
            Customer.wa_id,
            Customer.user_id,
            Consent.opted_out,
            Consent.source,
            Consent.changed_at,
        )
        .select_from(CustomerAlias)
        .join(
            Consent,
            and_(
                Consent.customer_id == CustomerAlias.customer_id,
                Consent.phone_number_id == phone_number_id,
                Consent.category == category,
            ),
        )
        .join(Customer, Customer.id == Consent.customer_id)
        .where(CustomerAlias.alias == any_(literal(list(aliases), ARRAY(Text))))
        .order_by(Consent.changed_at.desc(), Consent.opted_out.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def opted_out(
    conn: AsyncConnection,
    category: str,
    phone_number_ids: Sequence[str] | None,
    after: tuple[str, int] | None,
    limit: int,
) -> Sequence[AnyRow]:
    """Customers currently opted out, in key order, after the given (phone_number_id, customer_id)."""
    # Keyset pagination in primary-key order: (phone_number_id, customer_id) for one category.
    query = (
        select(
            Consent.phone_number_id,
            Consent.customer_id,
            Customer.wa_id,
            Customer.user_id,
            Consent.opted_out,
            Consent.source,
            Consent.changed_at,
        )
        .join(Customer, Customer.id == Consent.customer_id)
        .where(Consent.category == category, Consent.opted_out)
        .order_by(Consent.phone_number_id, Consent.customer_id)
        .limit(limit)
    )
    if phone_number_ids is not None:
        query = query.where(Consent.phone_number_id == any_(literal(list(phone_number_ids), ARRAY(Text))))
    if after is not None:
        query = query.where(tuple_(Consent.phone_number_id, Consent.customer_id) > after)
    return (await conn.execute(query)).all()


@dataclass(frozen=True, slots=True)
class Hold:
    phone_number_id: str
    customer_id: int
    code: int
    since: datetime
    until: datetime


async def record_holds(conn: AsyncConnection, holds: Sequence[Hold]) -> None:
    """One hold per (number, customer): the one that lasts longest wins, whatever the arrival order."""
    if not holds:
        return
    u = (
        func.unnest(
            literal([h.phone_number_id for h in holds], ARRAY(Text)),
            literal([h.customer_id for h in holds], ARRAY(BigInteger)),
            literal([h.code for h in holds], ARRAY(Integer)),
            literal([h.since for h in holds], ARRAY(TZ)),
            literal([h.until for h in holds], ARRAY(TZ)),
        )
        .table_valued("phone_number_id", "customer_id", "code", "since", "until")
        .render_derived(name="u")
    )
    key = (u.c.phone_number_id, u.c.customer_id)
    longest = select(*u.c).ext(distinct_on(*key)).order_by(*key, u.c.until.desc())
    upsert = insert(MarketingHold).from_select(list(u.c.keys()), longest)
    await conn.execute(
        upsert.on_conflict_do_update(
            index_elements=[MarketingHold.phone_number_id, MarketingHold.customer_id],
            set_={
                "code": upsert.excluded.code,
                "since": upsert.excluded.since,
                "until": upsert.excluded.until,
            },
            where=upsert.excluded.until > MarketingHold.until,
        )
    )


async def current_hold(
    conn: AsyncConnection, phone_number_id: str, aliases: Sequence[str], now: datetime
) -> AnyRow | None:
    """The hold still running on the customer these spellings name (the longest), with its wa_id and
    user_id."""
    query = (
        select(MarketingHold.code, MarketingHold.since, MarketingHold.until, Customer.wa_id, Customer.user_id)
        .select_from(CustomerAlias)
        .join(
            MarketingHold,
            and_(
                MarketingHold.customer_id == CustomerAlias.customer_id,
                MarketingHold.phone_number_id == phone_number_id,
                MarketingHold.until > now,
            ),
        )
        .join(Customer, Customer.id == MarketingHold.customer_id)
        .where(CustomerAlias.alias == any_(literal(list(aliases), ARRAY(Text))))
        .order_by(MarketingHold.until.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()
