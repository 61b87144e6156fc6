"""Every SQL statement about windows and the inbound messages that open them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Select,
    Text,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, Insert, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import InstrumentedAttribute, aliased

from window_gate.db import Rows, Statement
from window_gate.models import TZ, Continuation, HeldMessage, Window
from window_gate.window.rule import WindowFacts

# One round trip (asyncpg, the hot path): the best-matching alias that has a window for this number,
# else any customer it names; and on every row (at least one, idx NULL when no alias is known) what Meta
# said of the number and its account.
LOOKUP = Statement(
    """
SELECT q.idx, c.wa_id, c.user_id, w.last_inbound_at, w.closed_by_meta_at, w.referral_at, w.fep_started_at,
       w.fep_expires_at, n.quality_event, n.messaging_limit_tier, n.quality_updated_at,
       n.restrictions::text AS restrictions, n.ban_state
FROM (
  SELECT p.quality_event, p.messaging_limit_tier, p.quality_updated_at, b.restrictions, b.ban_state
  FROM (VALUES (1)) one(x)
  LEFT JOIN phone_numbers p ON p.phone_number_id = :phone_number_id
  LEFT JOIN business_accounts b ON b.waba_id = p.waba_id
) n
LEFT JOIN (
  unnest(CAST(:idx AS int[]), CAST(:aliases AS text[]), CAST(:ranks AS int[])) AS q(idx, alias, rank)
  JOIN customer_aliases a ON a.alias = q.alias
  JOIN customers c ON c.id = a.customer_id
  LEFT JOIN windows w ON w.customer_id = c.id AND w.phone_number_id = :phone_number_id
) ON true
ORDER BY q.idx, (w.last_inbound_at IS NULL), q.rank
"""
)
# Every fact of a window (and its key).
FACTS = (
    Window.phone_number_id,
    Window.customer_id,
    Window.last_inbound_at,
    Window.last_inbound_message_id,
    Window.closed_by_meta_at,
    Window.referral_at,
    Window.referral,
    Window.fep_started_at,
    Window.fep_expires_at,
)


def _upsert_facts(columns: Sequence[InstrumentedAttribute[Any]], source: Select[Any]) -> Insert:
    """Window facts only ever move forward, so any order of (re)deliveries converges on the same row. In
    ON CONFLICT … SET every expression sees the row as it was, so the CASEs compare old with new; a fact
    the source does not give is NULL there, which moves nothing. Webhook ingest writes the same upsert out
    by hand for the facts a message gives (webhook/repository.py: INGEST): change one, change the other."""
    upsert = insert(Window).from_select([c.key for c in columns], source)
    new = upsert.excluded
    never = literal_column("'-infinity'", TZ)
    return upsert.on_conflict_do_update(
        index_elements=[Window.phone_number_id, Window.customer_id],
        set_={
            "last_inbound_message_id": case(
                (
                    new.last_inbound_at > func.coalesce(Window.last_inbound_at, never),
                    new.last_inbound_message_id,
                ),
                else_=Window.last_inbound_message_id,
            ),
            "last_inbound_at": func.greatest(Window.last_inbound_at, new.last_inbound_at),
            "closed_by_meta_at": func.greatest(Window.closed_by_meta_at, new.closed_by_meta_at),
            "referral": case(
                (new.referral_at > func.coalesce(Window.referral_at, never), new.referral),
                else_=Window.referral,
            ),
            "referral_at": func.greatest(Window.referral_at, new.referral_at),
            "fep_started_at": func.coalesce(Window.fep_started_at, new.fep_started_at),
            "fep_expires_at": func.greatest(Window.fep_expires_at, new.fep_expires_at),
            "updated_at": func.now(),
        },
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    phone_number_id: str
    customer_id: int
    closed_at: datetime | None
    fep_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Found:
    wa_id: str | None
    user_id: str | None
    facts: WindowFacts


@dataclass(frozen=True, slots=True)
class NumberFacts:
    """What Meta's webhooks said of the business number and its account."""

    quality_event: str | None
    messaging_limit_tier: str | None
    quality_updated_at: datetime | None
    restrictions: list[dict[str, Any]]  # [{"type", "expires_at": ISO 8601 | None}], expired ones too
    ban_state: str | None


@dataclass(frozen=True, slots=True)
class Lookup:
    windows: list[Found | None]  # one per customer asked, in order
    number: NumberFacts | None  # None: Meta said nothing of the number or its account


async def record_verdicts(conn: AsyncConnection, verdicts: Sequence[Verdict]) -> None:
    """Meta's word on windows: 131047 closures and free-entry-point expiries."""
    if not verdicts:
        return
    given = (
        func.unnest(
            literal([v.phone_number_id for v in verdicts], ARRAY(Text)),
            literal([v.customer_id for v in verdicts], ARRAY(BigInteger)),
            literal([v.closed_at for v in verdicts], ARRAY(TZ)),
            literal([v.fep_expires_at for v in verdicts], ARRAY(TZ)),
        )
        .table_valued("phone_number_id", "customer_id", "closed_at", "fep_expires_at")
        .render_derived(name="v")
    )
    key = (given.c.phone_number_id, given.c.customer_id)
    source = (
        select(*key, func.max(given.c.closed_at), func.max(given.c.fep_expires_at))
        .group_by(*key)
        .order_by(*key)
    )
    columns = (Window.phone_number_id, Window.customer_id, Window.closed_by_meta_at, Window.fep_expires_at)
    await conn.execute(_upsert_facts(columns, source))


async def move_windows(conn: AsyncConnection, src: int, dst: int) -> None:
    """Merge one customer's windows into another's (the facts of both kept, as if delivered together),
    and the waits for their replies (message/held.py)."""
    columns = [literal(dst, BigInteger) if c is Window.customer_id else c for c in FACTS]
    source = select(*columns).where(Window.customer_id == src).order_by(Window.phone_number_id)
    await conn.execute(_upsert_facts(FACTS, source))
    await conn.execute(delete(Window).where(Window.customer_id == src))
    waiting = ("sending", "awaiting_reply")
    mine, theirs = aliased(Continuation), aliased(Continuation)
    # Two open waits for one number cannot both stay: the merged-away one's held messages join the other.
    await conn.execute(
        update(HeldMessage)
        .where(
            HeldMessage.continuation_id == mine.id,
            mine.customer_id == src,
            mine.state.in_(waiting),
            theirs.customer_id == dst,
            theirs.phone_number_id == mine.phone_number_id,
            theirs.state.in_(waiting),
        )
        .values(continuation_id=theirs.id)
    )
    clash = Continuation.state.in_(waiting) & exists().where(
        theirs.customer_id == dst,
        theirs.phone_number_id == Continuation.phone_number_id,
        theirs.state.in_(waiting),
    )
    await conn.execute(
        update(Continuation).where(Continuation.customer_id == src, ~clash).values(customer_id=dst)
    )


async def lookup(hot: Rows, phone_number_id: str, candidates: Sequence[Sequence[str]]) -> Lookup:
    """For each customer (given as its candidate aliases, best first), what is known of its window; and
    what is known of the number. `hot`: the asyncpg road (the hot pool, or a replica.Replica)."""
    idx: list[int] = []
    aliases: list[str] = []
    ranks: list[int] = []
    for i, names in enumerate(candidates):
        for rank, alias in enumerate(names):
            idx.append(i)
            aliases.append(alias)
            ranks.append(rank)
    found: list[Found | None] = [None] * len(candidates)
    params = {"idx": idx, "aliases": aliases, "ranks": ranks, "phone_number_id": phone_number_id}
    rows = await LOOKUP.all(hot, params)
    for row in rows:
        if row["idx"] is not None and found[row["idx"]] is None:
            found[row["idx"]] = _found(row)
    return Lookup(found, _number(rows[0]))


def _number(row: Any) -> NumberFacts | None:
    restrictions = orjson.loads(row["restrictions"]) if row["restrictions"] else None
    if not (row["quality_event"] or row["messaging_limit_tier"] or restrictions or row["ban_state"]):
        return None
    return NumberFacts(
        row["quality_event"],
        row["messaging_limit_tier"],
        row["quality_updated_at"],
        restrictions if isinstance(restrictions, list) else [],
        row["ban_state"],
    )


def _found(row: Any) -> Found:
    facts = WindowFacts(
        last_inbound_at=row["last_inbound_at"],
        closed_by_meta_at=row["closed_by_meta_at"],
        referral_at=row["referral_at"],
        fep_started_at=row["fep_started_at"],
        fep_expires_at=row["fep_expires_at"],
    )
    return Found(row["wa_id"], row["user_id"], facts)
