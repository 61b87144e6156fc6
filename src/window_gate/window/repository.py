"""Every SQL statement about windows and the inbound messages that open them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

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

RECORD_INBOUND = text(
    f"""
WITH u AS (
  SELECT * FROM unnest(CAST(:message_ids AS text[]), CAST(:phone_number_ids AS text[]),
    CAST(:customer_ids AS bigint[]), CAST(:types AS text[]), CAST(:sent_at AS timestamptz[]),
    CAST(:counts_from AS timestamptz[]), CAST(:referrals AS jsonb[]))
    AS u(message_id, phone_number_id, customer_id, type, sent_at, counts_from, referral)
  -- one row per message id, even when a delivery repeats one
  ORDER BY message_id, counts_from
), m AS (
  SELECT DISTINCT ON (message_id) * FROM u
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
SELECT message_id FROM fresh
"""
)

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
    customer_id: int
    type: str
    sent_at: datetime
    counts_from: datetime
    referral: str | None  # JSON text


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


async def record_inbound(conn: AsyncConnection, messages: Sequence[Inbound]) -> set[str]:
    """Store new inbound messages and move their windows forward; returns the ids not seen before."""
    if not messages:
        return set()
    params: dict[str, Any] = {
        "message_ids": [m.message_id for m in messages],
        "phone_number_ids": [m.phone_number_id for m in messages],
        "customer_ids": [m.customer_id for m in messages],
        "types": [m.type for m in messages],
        "sent_at": [m.sent_at for m in messages],
        "counts_from": [m.counts_from for m in messages],
        "referrals": [m.referral for m in messages],
    }
    return set((await conn.execute(RECORD_INBOUND, params)).scalars())


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


async def lookup(reads: Any, phone_number_id: str, candidates: Sequence[Sequence[str]]) -> list[Found | None]:
    """For each customer (given as its candidate aliases, best first), what is known of its window.
    `reads` is the asyncpg pool of the hot reads."""
    idx: list[int] = []
    aliases: list[str] = []
    ranks: list[int] = []
    for i, names in enumerate(candidates):
        for rank, alias in enumerate(names):
            idx.append(i)
            aliases.append(alias)
            ranks.append(rank)
    found: list[Found | None] = [None] * len(candidates)
    for row in await reads.fetch(LOOKUP, idx, aliases, ranks, phone_number_id):
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
