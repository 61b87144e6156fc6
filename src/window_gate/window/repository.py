"""Every SQL statement about windows and the inbound messages that open them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    Text,
    case,
    delete,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, Insert, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import InstrumentedAttribute

from window_gate.db import HotPool, Statement
from window_gate.models import TZ, Window
from window_gate.window.rule import WindowFacts

# The hot path of webhook ingest, one autocommit statement on asyncpg for any number of deliveries (those
# arriving together are coalesced): the raw deliveries are kept, each message's customer is found by its
# aliases, new message ids are recorded and their windows move forward. Messages whose customer is unknown
# (or newly linked) come back unresolved, for the slow path. Its `up` is `_upsert_facts` (below) written
# out for the facts a delivery gives: change one, change the other.
RECORD_DELIVERIES = Statement(
    """
WITH d AS MATERIALIZED (  -- one id per kept body, in the order given
  SELECT ord, body, CASE WHEN body IS NOT NULL THEN nextval(s.seq) END AS id
  FROM unnest(CAST(:bodies AS bytea[])) WITH ORDINALITY AS t(body, ord),
    (SELECT pg_get_serial_sequence('webhook_deliveries', 'id')::regclass AS seq) s
), raw AS (
  INSERT INTO webhook_deliveries (id, body) SELECT id, body FROM d WHERE id IS NOT NULL
), u AS (
  SELECT * FROM unnest(CAST(:message_ids AS text[]), CAST(:phone_number_ids AS text[]), CAST(:wa_ids AS text[]),
    CAST(:user_ids AS text[]), CAST(:types AS text[]), CAST(:sent_at AS timestamptz[]),
    CAST(:counts_from AS timestamptz[]), CAST(:referrals AS jsonb[]))
    AS u(message_id, phone_number_id, wa_id, user_id, type, sent_at, counts_from, referral)
), r AS (
  SELECT u.*, COALESCE(aw.customer_id, au.customer_id) AS customer_id,
    (u.wa_id IS NULL OR aw.customer_id IS NOT NULL) AND (u.user_id IS NULL OR au.customer_id IS NOT NULL)
      AND (aw.customer_id IS NULL OR au.customer_id IS NULL OR aw.customer_id = au.customer_id) AS resolved
  FROM u
  LEFT JOIN customer_aliases aw ON aw.alias = u.wa_id
  LEFT JOIN customer_aliases au ON au.alias = u.user_id
), m AS (  -- one row per message id, even when a delivery repeats one
  SELECT DISTINCT ON (message_id) * FROM r WHERE resolved ORDER BY message_id, counts_from
), fresh AS (
  INSERT INTO inbound_messages (message_id, phone_number_id, customer_id, type, sent_at)
  SELECT message_id, phone_number_id, customer_id, type, sent_at FROM m ORDER BY message_id
  ON CONFLICT (message_id) DO NOTHING
  RETURNING message_id
), up AS (
  INSERT INTO windows AS w (phone_number_id, customer_id, last_inbound_at, last_inbound_message_id, referral_at,
                            referral)
  SELECT phone_number_id, customer_id, max(counts_from), (array_agg(message_id ORDER BY counts_from DESC))[1],
    max(counts_from) FILTER (WHERE referral IS NOT NULL),
    (array_agg(referral ORDER BY counts_from DESC) FILTER (WHERE referral IS NOT NULL))[1]
  FROM m WHERE message_id IN (SELECT message_id FROM fresh)
  GROUP BY phone_number_id, customer_id ORDER BY phone_number_id, customer_id
  ON CONFLICT (phone_number_id, customer_id) DO UPDATE SET
    last_inbound_message_id = CASE WHEN EXCLUDED.last_inbound_at > COALESCE(w.last_inbound_at, '-infinity')
      THEN EXCLUDED.last_inbound_message_id ELSE w.last_inbound_message_id END,
    last_inbound_at = GREATEST(w.last_inbound_at, EXCLUDED.last_inbound_at),
    referral = CASE WHEN EXCLUDED.referral_at > COALESCE(w.referral_at, '-infinity')
      THEN EXCLUDED.referral ELSE w.referral END,
    referral_at = GREATEST(w.referral_at, EXCLUDED.referral_at),
    updated_at = now()
)
SELECT (SELECT array_agg(id ORDER BY ord) FROM d) AS delivery_ids,
  array_agg(r.message_id) FILTER (WHERE f.message_id IS NOT NULL) AS fresh,
  array_agg(r.message_id) FILTER (WHERE NOT r.resolved) AS unresolved
FROM r LEFT JOIN fresh f USING (message_id)
"""
)

# One round trip (asyncpg, the hot path): the best-matching alias that has a window for this number,
# else any customer it names.
LOOKUP = Statement(
    """
SELECT q.idx, c.wa_id, c.user_id, w.last_inbound_at, w.closed_by_meta_at, w.referral_at, w.fep_started_at,
       w.fep_expires_at
FROM unnest(CAST(:idx AS int[]), CAST(:aliases AS text[]), CAST(:ranks AS int[])) AS q(idx, alias, rank)
JOIN customer_aliases a ON a.alias = q.alias
JOIN customers c ON c.id = a.customer_id
LEFT JOIN windows w ON w.customer_id = c.id AND w.phone_number_id = :phone_number_id
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
    the source does not give is NULL there, which moves nothing."""
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
class Inbound:
    message_id: str
    phone_number_id: str
    wa_id: str | None
    user_id: str | None
    type: str
    sent_at: datetime
    counts_from: datetime
    referral: str | None  # JSON text


@dataclass(frozen=True, slots=True)
class Recorded:
    delivery_id: int | None  # the kept raw delivery
    fresh: set[str]  # message ids not seen before
    unresolved: set[str]  # message ids whose customer must be created or linked first


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


# The raw body (None: not to be kept again) and its messages.
RawDelivery = tuple[bytes | None, Sequence[Inbound]]


async def record_deliveries(hot: HotPool, deliveries: Sequence[RawDelivery]) -> list[Recorded]:
    """Keep the raw deliveries and apply their messages, in one statement (asyncpg); one answer each."""
    messages = [m for _, ms in deliveries for m in ms]
    (row,) = await RECORD_DELIVERIES.all(  # an aggregate: one row
        hot,
        {
            "bodies": [body for body, _ in deliveries],
            "message_ids": [m.message_id for m in messages],
            "phone_number_ids": [m.phone_number_id for m in messages],
            "wa_ids": [m.wa_id for m in messages],
            "user_ids": [m.user_id for m in messages],
            "types": [m.type for m in messages],
            "sent_at": [m.sent_at for m in messages],
            "counts_from": [m.counts_from for m in messages],
            "referrals": [m.referral for m in messages],
        },
    )
    fresh, unresolved = set(row["fresh"] or ()), set(row["unresolved"] or ())
    answers = []
    for delivery_id, (_, ms) in zip(row["delivery_ids"], deliveries, strict=True):
        ids = {m.message_id for m in ms}
        answers.append(Recorded(delivery_id, ids & fresh, ids & unresolved))
        fresh -= ids  # a message id in two deliveries is fresh in the first only
    return answers


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
    """Merge one customer's windows into another's (the facts of both kept, as if delivered together)."""
    columns = [literal(dst, BigInteger) if c is Window.customer_id else c for c in FACTS]
    source = select(*columns).where(Window.customer_id == src).order_by(Window.phone_number_id)
    await conn.execute(_upsert_facts(FACTS, source))
    await conn.execute(delete(Window).where(Window.customer_id == src))


async def lookup(
    hot: HotPool, phone_number_id: str, candidates: Sequence[Sequence[str]]
) -> list[Found | None]:
    """For each customer (given as its candidate aliases, best first), what is known of its window.
    `hot` is the asyncpg pool of the hot paths."""
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
    for row in await LOOKUP.all(hot, params):
        if found[row["idx"]] is None:
            found[row["idx"]] = _found(row)
    return found


def _found(row: Any) -> Found:
    facts = WindowFacts(
        last_inbound_at=row["last_inbound_at"],
        closed_by_meta_at=row["closed_by_meta_at"],
        referral_at=row["referral_at"],
        fep_started_at=row["fep_started_at"],
        fep_expires_at=row["fep_expires_at"],
    )
    return Found(row["wa_id"], row["user_id"], facts)
