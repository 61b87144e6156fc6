"""Every SQL statement about windows and the inbound messages that open them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.db import HotPool
from window_gate.window.rule import WindowFacts

FACT_COLUMNS = (
    "phone_number_id, customer_id, last_inbound_at, last_inbound_message_id, closed_by_meta_at, "
    "referral_at, referral, fep_started_at, fep_expires_at"
)
# Window facts only ever move forward, so any order of (re)deliveries converges on the same row.
# In ON CONFLICT … SET every expression sees the row as it was, so the CASEs compare old with new.
UPSERT_FACTS = f"""
INSERT INTO windows AS w ({FACT_COLUMNS}) {{source}}
ON CONFLICT (phone_number_id, customer_id) DO UPDATE SET
  last_inbound_message_id = CASE WHEN EXCLUDED.last_inbound_at > COALESCE(w.last_inbound_at, '-infinity')
    THEN EXCLUDED.last_inbound_message_id ELSE w.last_inbound_message_id END,
  last_inbound_at = GREATEST(w.last_inbound_at, EXCLUDED.last_inbound_at),
  closed_by_meta_at = GREATEST(w.closed_by_meta_at, EXCLUDED.closed_by_meta_at),
  referral = CASE WHEN EXCLUDED.referral_at > COALESCE(w.referral_at, '-infinity')
    THEN EXCLUDED.referral ELSE w.referral END,
  referral_at = GREATEST(w.referral_at, EXCLUDED.referral_at),
  fep_started_at = COALESCE(w.fep_started_at, EXCLUDED.fep_started_at),
  fep_expires_at = GREATEST(w.fep_expires_at, EXCLUDED.fep_expires_at),
  updated_at = now()
"""

# The hot path of webhook ingest, one autocommit statement on asyncpg for any number of deliveries (those
# arriving together are coalesced): the raw deliveries are kept, each message's customer is found by its
# aliases, new message ids are recorded and their windows move forward. Messages whose customer is unknown
# (or newly linked) come back unresolved, for the slow path.
RECORD_DELIVERIES = f"""
WITH d AS MATERIALIZED (  -- one id per kept body, in the order given
  SELECT ord, body, CASE WHEN body IS NOT NULL THEN nextval(s.seq) END AS id
  FROM unnest($1::bytea[]) WITH ORDINALITY AS t(body, ord),
    (SELECT pg_get_serial_sequence('webhook_deliveries', 'id')::regclass AS seq) s
), raw AS (
  INSERT INTO webhook_deliveries (id, body) SELECT id, body FROM d WHERE id IS NOT NULL
), u AS (
  SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
    $8::timestamptz[], $9::jsonb[])
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
), up AS ({
    UPSERT_FACTS.format(
        source='''
  SELECT phone_number_id, customer_id, max(counts_from),
    (array_agg(message_id ORDER BY counts_from DESC))[1], NULL::timestamptz,
    max(counts_from) FILTER (WHERE referral IS NOT NULL),
    (array_agg(referral ORDER BY counts_from DESC) FILTER (WHERE referral IS NOT NULL))[1],
    NULL::timestamptz, NULL::timestamptz
  FROM m WHERE message_id IN (SELECT message_id FROM fresh)
  GROUP BY phone_number_id, customer_id ORDER BY phone_number_id, customer_id'''
    )
}
)
SELECT (SELECT array_agg(id ORDER BY ord) FROM d) AS delivery_ids,
  array_agg(r.message_id) FILTER (WHERE f.message_id IS NOT NULL) AS fresh,
  array_agg(r.message_id) FILTER (WHERE NOT r.resolved) AS unresolved
FROM r LEFT JOIN fresh f USING (message_id)
"""

RECORD_VERDICTS = text(
    UPSERT_FACTS.format(
        source="""
  SELECT phone_number_id, customer_id, NULL::timestamptz, NULL, max(closed_at), NULL::timestamptz, NULL::jsonb,
    NULL::timestamptz, max(fep_expires_at)
  FROM unnest(CAST(:phone_number_ids AS text[]), CAST(:customer_ids AS bigint[]),
    CAST(:closed_at AS timestamptz[]), CAST(:fep_expires_at AS timestamptz[]))
    AS v(phone_number_id, customer_id, closed_at, fep_expires_at)
  GROUP BY phone_number_id, customer_id ORDER BY phone_number_id, customer_id"""
    )
)

MOVE_WINDOWS = (
    text(
        UPSERT_FACTS.format(
            source=f"SELECT {FACT_COLUMNS.replace('customer_id', 'CAST(:dst AS bigint)')} "
            "FROM windows WHERE customer_id = :src ORDER BY phone_number_id"
        )
    ),
    text("DELETE FROM windows WHERE customer_id = :src"),
)

# One round trip (asyncpg, the hot path): the best-matching alias that has a window for this number,
# else any customer it names.
LOOKUP = """
SELECT q.idx, c.wa_id, c.user_id, w.last_inbound_at, w.closed_by_meta_at, w.referral_at, w.fep_started_at,
       w.fep_expires_at
FROM unnest($1::int[], $2::text[], $3::int[]) AS q(idx, alias, rank)
JOIN customer_aliases a ON a.alias = q.alias
JOIN customers c ON c.id = a.customer_id
LEFT JOIN windows w ON w.customer_id = c.id AND w.phone_number_id = $4
ORDER BY q.idx, (w.last_inbound_at IS NULL), q.rank
"""


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
    row = await hot.fetchrow(
        RECORD_DELIVERIES,
        [body for body, _ in deliveries],
        [m.message_id for m in messages],
        [m.phone_number_id for m in messages],
        [m.wa_id for m in messages],
        [m.user_id for m in messages],
        [m.type for m in messages],
        [m.sent_at for m in messages],
        [m.counts_from for m in messages],
        [m.referral for m in messages],
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
    if verdicts:
        await conn.execute(
            RECORD_VERDICTS,
            {
                "phone_number_ids": [v.phone_number_id for v in verdicts],
                "customer_ids": [v.customer_id for v in verdicts],
                "closed_at": [v.closed_at for v in verdicts],
                "fep_expires_at": [v.fep_expires_at for v in verdicts],
            },
        )


async def move_windows(conn: AsyncConnection, src: int, dst: int) -> None:
    for statement in MOVE_WINDOWS:
        await conn.execute(statement, {"src": src, "dst": dst})


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
    for row in await hot.fetch(LOOKUP, idx, aliases, ranks, phone_number_id):
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
