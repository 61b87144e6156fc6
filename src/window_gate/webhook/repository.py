"""Every SQL statement about webhook deliveries: the grouped statement that applies them, and the raw
bodies kept."""

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import (
    BigInteger,
    Engine,
    Text,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from window_gate.db import HotPool, Statement
from window_gate.models import TZ, BusinessAccount, InboundMessage, MessageEcho, PhoneNumber, WebhookDelivery

# Webhook ingest in one autocommit statement on the hot pool, for any number of deliveries arriving
# together (webhook/service.py groups them): the raw bodies are kept; each message's customer is found by
# its aliases, or made, or given the aliases it lacks (a BSUID next to a known wa_id); new message ids are
# recorded and their windows move forward; each status moves its message forward and is appended to its
# history. Left for the slow path (customer/service.py: link), as unresolved: customers to merge, aliases
# two identities of the group both lack, and aliases a concurrent delivery took first. Aliases are added
# under the advisory locks `link` takes, in one order; the statement's own conflicts (ON CONFLICT) catch
# what a concurrent statement committed meanwhile, so two replicas never make two customers of one.
# `up` is window/repository.py's `_upsert_facts` written out for the facts a message gives: change one,
# change the other. The status rule is migration 0007's message_status_after.
INGEST = Statement(
    """
WITH d AS MATERIALIZED (  -- one id per kept body, in the order given; one relay event id each
  SELECT ord, body, numbers, CASE WHEN body IS NOT NULL THEN nextval(s.seq) END AS id,
    CASE WHEN body IS NOT NULL THEN gen_random_uuid() END AS event_id
  FROM unnest(CAST(:bodies AS bytea[]), CAST(:numbers AS text[])) WITH ORDINALITY AS t(body, numbers, ord),
    (SELECT pg_get_serial_sequence('webhook_deliveries', 'id')::regclass AS seq) s
), raw AS (
  INSERT INTO webhook_deliveries (id, body) SELECT id, body FROM d WHERE id IS NOT NULL
), relayed AS (  -- the outbox (subscription/): one row per kept body some meta.webhook subscriber wants,
  -- made into one per subscriber in the background (subscription/repository.py: FAN_OUT)
  INSERT INTO relay_fanout (webhook_delivery_id, event_id, phone_number_ids)
  SELECT d.id, d.event_id, string_to_array(d.numbers, ' ') FROM d
  WHERE d.id IS NOT NULL AND EXISTS (
    SELECT FROM subscriptions sub WHERE 'meta.webhook' = ANY(sub.events)
      AND (sub.phone_number_ids IS NULL OR sub.phone_number_ids && string_to_array(d.numbers, ' ')))
  ORDER BY d.id
), u AS (
  SELECT * FROM unnest(CAST(:message_ids AS text[]), CAST(:phone_number_ids AS text[]), CAST(:wa_ids AS text[]),
    CAST(:user_ids AS text[]), CAST(:types AS text[]), CAST(:sent_at AS timestamptz[]),
    CAST(:counts_from AS timestamptz[]), CAST(:referrals AS jsonb[]))
    AS u(message_id, phone_number_id, wa_id, user_id, type, sent_at, counts_from, referral)
), i AS MATERIALIZED (  -- each identity once: the customers its aliases name, the aliases nobody has
  SELECT x.wa_id, x.user_id, aw.customer_id AS by_wa, au.customer_id AS by_user,
    array_remove(ARRAY[CASE WHEN aw.alias IS NULL THEN x.wa_id END,
                       CASE WHEN au.alias IS NULL THEN x.user_id END], NULL) AS missing
  FROM (SELECT DISTINCT wa_id, user_id FROM u) x
  LEFT JOIN customer_aliases aw ON aw.alias = x.wa_id
  LEFT JOIN customer_aliases au ON au.alias = x.user_id
), todo AS MATERIALIZED (  -- identities lacking aliases no other identity of the group lacks: made here
  SELECT i.wa_id, i.user_id, i.missing, COALESCE(i.by_wa, i.by_user) AS known,
    CASE WHEN i.by_wa IS NULL AND i.by_user IS NULL THEN nextval(s.seq) END AS new_id
  FROM i, (SELECT pg_get_serial_sequence('customers', 'id')::regclass AS seq) s
  WHERE cardinality(i.missing) > 0 AND NOT i.missing && ARRAY(
    SELECT alias FROM i, unnest(i.missing) AS alias GROUP BY alias HAVING count(*) > 1)
), locks AS MATERIALIZED (  -- customer/service.py: link takes the same locks, in the same order
  SELECT count(*) AS n FROM (
    SELECT pg_advisory_xact_lock(hashtext(alias))
    FROM (SELECT DISTINCT unnest(missing) AS alias FROM todo ORDER BY 1) a) l
), made AS (  -- not when a concurrent delivery made this customer first (its wa_id or BSUID taken)
  INSERT INTO customers (id, wa_id, user_id)
  SELECT new_id, wa_id, user_id FROM todo WHERE new_id IS NOT NULL AND (SELECT n FROM locks) >= 0
  ORDER BY new_id
  ON CONFLICT DO NOTHING
  RETURNING id
), added AS (
  INSERT INTO customer_aliases (alias, customer_id, source)
  SELECT a.alias, COALESCE(t.known, t.new_id), 'webhook'
  FROM todo t CROSS JOIN LATERAL unnest(t.missing) AS a(alias)
  WHERE (SELECT n FROM locks) >= 0 AND (t.known IS NOT NULL OR t.new_id IN (SELECT id FROM made))
  ORDER BY a.alias
  ON CONFLICT (alias) DO NOTHING
  RETURNING alias
), completed AS (  -- every alias it lacked is its own now
  SELECT t.wa_id, t.user_id, t.known, COALESCE(t.known, t.new_id) AS customer_id
  FROM todo t CROSS JOIN LATERAL unnest(t.missing) AS m(alias) LEFT JOIN added a ON a.alias = m.alias
  GROUP BY t.wa_id, t.user_id, t.known, t.new_id
  HAVING count(a.alias) = count(*)
), filled AS (  -- ids a known customer lacked
  UPDATE customers k SET wa_id = COALESCE(k.wa_id, c.wa_id), user_id = COALESCE(k.user_id, c.user_id)
  FROM completed c
  WHERE k.id = c.known AND (k.wa_id IS NULL AND c.wa_id IS NOT NULL OR k.user_id IS NULL AND c.user_id IS NOT NULL)
), settled AS (
  SELECT wa_id, user_id, COALESCE(by_wa, by_user) AS customer_id FROM i
  WHERE cardinality(missing) = 0 AND (by_wa IS NULL OR by_user IS NULL OR by_wa = by_user)
  UNION ALL
  SELECT wa_id, user_id, customer_id FROM completed
), r AS (
  SELECT u.*, s.customer_id FROM u LEFT JOIN settled s
    ON COALESCE(s.wa_id, '') = COALESCE(u.wa_id, '') AND COALESCE(s.user_id, '') = COALESCE(u.user_id, '')
), m AS (  -- one row per message id, even when a delivery repeats one
  SELECT DISTINCT ON (message_id) * FROM r WHERE customer_id IS NOT NULL ORDER BY message_id, counts_from
), fresh AS (
  INSERT INTO inbound_messages (message_id, phone_number_id, customer_id, type, sent_at)
  SELECT message_id, phone_number_id, customer_id, type, sent_at FROM m ORDER BY message_id
  ON CONFLICT (phone_number_id, message_id) DO NOTHING
  RETURNING message_id
), replied AS (  -- continue the conversation (message/held.py): the customer's reply releases the wait
  UPDATE continuations c SET state = 'replied', updated_at = now()
  FROM (SELECT phone_number_id, customer_id, max(counts_from) AS at, (array_agg(message_id))[1] AS message_id
        FROM m WHERE message_id IN (SELECT message_id FROM fresh) GROUP BY phone_number_id, customer_id) f
  WHERE c.phone_number_id = f.phone_number_id AND c.customer_id = f.customer_id AND c.state = 'awaiting_reply'
    AND f.at >= date_trunc('second', c.created_at)
  RETURNING c.id, f.message_id
), wanted AS MATERIALIZED (  -- which of the gate's events some subscription wants (usually none)
  SELECT DISTINCT unnest(events) AS type FROM subscriptions
), newest AS (  -- per window, the newest fresh message: what its events count from
  SELECT phone_number_id, customer_id, max(counts_from) AS at,
    (array_agg(message_id ORDER BY counts_from DESC))[1] AS message_id,
    (array_agg(wa_id ORDER BY counts_from DESC))[1] AS wa_id,
    (array_agg(user_id ORDER BY counts_from DESC))[1] AS user_id
  FROM m WHERE message_id IN (SELECT message_id FROM fresh) AND EXISTS (SELECT FROM wanted)
  GROUP BY phone_number_id, customer_id
), opened AS (  -- window.opened: the window was not open when this message came, and is now
  SELECT n.* FROM newest n LEFT JOIN windows w USING (phone_number_id, customer_id)
  WHERE 'window.opened' IN (SELECT type FROM wanted) AND n.at > now() - CAST(:window AS interval)
    AND (w.last_inbound_at IS NULL OR w.last_inbound_at <= n.at - CAST(:window AS interval)
         OR w.closed_by_meta_at >= w.last_inbound_at)
), alarms AS (  -- when window.expiring / window.closed come due (subscription/jobs.py fires them)
  INSERT INTO window_alarms AS a (phone_number_id, customer_id, kind, last_inbound_at, due_at)
  SELECT n.phone_number_id, n.customer_id, k.kind, n.at, n.at + CAST(:window AS interval) - k.lead
  FROM newest n CROSS JOIN (VALUES ('window.expiring', CAST(:lead AS interval)), ('window.closed', interval '0'))
    AS k(kind, lead)
  WHERE k.kind IN (SELECT type FROM wanted)
  ORDER BY 1, 2, 3
  ON CONFLICT (phone_number_id, customer_id, kind) DO UPDATE
    SET last_inbound_at = EXCLUDED.last_inbound_at, due_at = EXCLUDED.due_at
    WHERE EXCLUDED.last_inbound_at > a.last_inbound_at
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
), s AS (
  SELECT * FROM unnest(CAST(:own_ids AS uuid[]), CAST(:wamids AS text[]), CAST(:statuses AS text[]),
    CAST(:status_at AS timestamptz[]), CAST(:errors AS jsonb[]), CAST(:pricing AS jsonb[]),
    CAST(:details AS jsonb[])) WITH ORDINALITY AS s(own_id, wamid, status, at, error, pricing, detail, ord)
), sm AS MATERIALIZED (  -- each status's message: by the gate's own id (biz_opaque_callback_data), else Meta's
  SELECT s.*, f.id AS message_id, f.phone_number_id FROM s CROSS JOIN LATERAL (  -- own id: its month (0019)
    (SELECT id, phone_number_id FROM messages WHERE id = s.own_id AND created_at >= message_made_after(s.own_id))
    UNION ALL (SELECT id, phone_number_id FROM messages WHERE graph_message_id = s.wamid) LIMIT 1) f
), locked AS MATERIALIZED (  -- in one order: two replicas' groups never deadlock
  SELECT id, status FROM messages WHERE id IN (SELECT message_id FROM sm) ORDER BY id FOR UPDATE
), moved AS (  -- several statuses of one message in one group: folded in arrival order
  UPDATE messages o SET status = message_status_after(o.status, g.statuses),
    graph_message_id = COALESCE(o.graph_message_id, g.wamid), error = COALESCE(g.error, o.error),
    pricing = COALESCE(g.pricing, o.pricing), updated_at = now()
  FROM (
    SELECT message_id, array_agg(status ORDER BY ord) AS statuses, (array_agg(wamid ORDER BY ord))[1] AS wamid,
      (array_agg(error ORDER BY ord DESC) FILTER (WHERE error IS NOT NULL))[1] AS error,
      (array_agg(pricing ORDER BY ord DESC) FILTER (WHERE pricing IS NOT NULL))[1] AS pricing, max(at) AS at
    FROM sm GROUP BY message_id
  ) g
  WHERE o.id = g.message_id AND o.id IN (SELECT id FROM locked)
  RETURNING o.id, o.phone_number_id, o.body -> 'template' AS template, o.status, o.graph_message_id, o.error,
    o.recipient_wa_id, g.at
), gate_events AS MATERIALIZED (  -- the gate's own events this group causes (subscription/rules.py)
  SELECT gen_random_uuid() AS id, 'window.opened' AS type, o.at, o.phone_number_id, o.wa_id, o.user_id,
    jsonb_build_object('message_id', o.message_id, 'last_inbound_at', gate_time(o.at),
                       'expires_at', gate_time(o.at + CAST(:window AS interval))) AS data
  FROM opened o
  UNION ALL
  SELECT gen_random_uuid(), 'message.status', o.at, o.phone_number_id, o.recipient_wa_id, NULL,
    jsonb_build_object('message_id', o.id, 'graph_message_id', o.graph_message_id, 'status', o.status,
                       'previous_status', l.status, 'error', o.error)
  FROM moved o JOIN locked l USING (id)
  WHERE o.status IS DISTINCT FROM l.status AND 'message.status' IN (SELECT type FROM wanted)
), gate_events_out AS (
  INSERT INTO relay_deliveries (subscription_id, event_id, event_type, body)
  SELECT sub.id, e.id, e.type, gate_event(e.id, e.type, e.at, e.phone_number_id, e.wa_id, e.user_id, e.data)
  FROM gate_events e JOIN subscriptions sub ON e.type = ANY(sub.events)
    AND (sub.phone_number_ids IS NULL OR e.phone_number_id = ANY(sub.phone_number_ids))
  ORDER BY e.id, sub.id
), events AS (  -- each once: Meta delivers again what it thinks was lost, and a concurrent group may hold a copy
  INSERT INTO message_events (phone_number_id, message_id, status, at, detail)
  SELECT phone_number_id, message_id, status, at, detail FROM (
    SELECT DISTINCT ON (message_id, status, at) * FROM sm
    ORDER BY message_id, status, at, ord
  ) once ORDER BY ord
  ON CONFLICT (phone_number_id, message_id, status, at) DO NOTHING
)
SELECT (SELECT array_agg(id ORDER BY ord) FROM d) AS delivery_ids,
  (SELECT array_agg(r.message_id) FROM r JOIN fresh f USING (message_id)) AS fresh,
  (SELECT array_agg(message_id) FROM r WHERE customer_id IS NULL) AS unresolved,
  (SELECT array_agg(ord) FROM sm) AS found,
  (SELECT json_agg(json_build_array(id, message_id)) FROM replied) AS replied,
  (SELECT json_agg(json_build_array(sm.ord, o.phone_number_id, o.template))
   FROM sm JOIN moved o ON o.id = sm.message_id
   WHERE sm.status = 'failed' AND jsonb_typeof(o.template) = 'object') AS failed_templates
"""
)


async def store(conn: AsyncConnection, body: bytes, error: str | None = None) -> int:
    return int(
        (
            await conn.execute(
                insert(WebhookDelivery).values(body=body, error=error).returning(WebhookDelivery.id)
            )
        ).scalar_one()
    )


async def mark_unapplied(conn: AsyncConnection, delivery_id: int, error: str) -> None:
    await conn.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(error=error))


async def purge(conn: AsyncConnection, days: int) -> None:
    """Forget inbound ids past retention (Meta redelivers for 7 days at most), and the business's echoes,
    kept as long as the deliveries they came in (which go by the month: partitions.py)."""
    cutoff = func.now() - timedelta(days=days)
    await conn.execute(delete(InboundMessage).where(InboundMessage.received_at < cutoff))
    await conn.execute(delete(MessageEcho).where(MessageEcho.received_at < cutoff))


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
class Status:
    own_id: UUID | None  # the gate's own message id, from biz_opaque_callback_data
    graph_message_id: str
    status: str
    at: datetime
    error: str | None  # JSON text: Meta's first error
    pricing: str | None  # JSON text
    detail: str  # JSON text: the whole status, kept in the message's history


@dataclass(frozen=True, slots=True)
class Received:
    body: bytes | None  # the raw delivery, to keep (None: kept already)
    inbound: Sequence[Inbound]
    statuses: Sequence[Status] = ()
    phone_number_ids: Sequence[str] = ()  # the numbers its changes name: which subscribers it is relayed to


@dataclass(frozen=True, slots=True)
class Clock:
    """The window's length, and how long before its end `window.expiring` is due."""

    window: timedelta
    lead: timedelta


@dataclass(frozen=True, slots=True)
class Recorded:
    delivery_id: int | None  # the kept raw delivery
    fresh: set[str]  # message ids not seen before
    unresolved: set[str]  # message ids whose customer the slow path must create, link or merge
    found: list[bool] = field(default_factory=list)  # per status: its message is the gate's
    # A template the gate sent that Meta reports failed: (index of the status, phone_number_id, template).
    failed_templates: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    replied: list[UUID] = field(default_factory=list)  # waits its messages answered (message/held.py)


async def record(hot: HotPool, clock: "Clock", group: Sequence[Received]) -> list[Recorded]:
    """Keep and apply a group of deliveries in one statement (asyncpg); one answer each, in order."""
    messages = [m for r in group for m in r.inbound]
    statuses = [s for r in group for s in r.statuses]
    (row,) = await INGEST.all(  # aggregates: one row
        hot,
        {
            "window": clock.window,
            "lead": clock.lead,
            "bodies": [r.body for r in group],
            "numbers": [" ".join(r.phone_number_ids) for r in group],
            "message_ids": [m.message_id for m in messages],
            "phone_number_ids": [m.phone_number_id for m in messages],
            "wa_ids": [m.wa_id for m in messages],
            "user_ids": [m.user_id for m in messages],
            "types": [m.type for m in messages],
            "sent_at": [m.sent_at for m in messages],
            "counts_from": [m.counts_from for m in messages],
            "referrals": [m.referral for m in messages],
            "own_ids": [s.own_id for s in statuses],
            "wamids": [s.graph_message_id for s in statuses],
            "statuses": [s.status for s in statuses],
            "status_at": [s.at for s in statuses],
            "errors": [s.error for s in statuses],
            "pricing": [s.pricing for s in statuses],
            "details": [s.detail for s in statuses],
        },
    )
    fresh, unresolved = set(row["fresh"] or ()), set(row["unresolved"] or ())
    found = set(row["found"] or ())  # statuses by their 1-based place in the group
    failed: dict[int, tuple[str, dict[str, Any]]] = {
        n: (pn, template) for n, pn, template in orjson.loads(row["failed_templates"] or "[]")
    }
    replied = [(UUID(wait), message_id) for wait, message_id in orjson.loads(row["replied"] or "[]")]
    answers = []
    first = 1  # this delivery's first status in the group
    for delivery_id, received in zip(row["delivery_ids"], group, strict=True):
        ids = {m.message_id for m in received.inbound}
        places = range(first, first + len(received.statuses))
        answers.append(
            Recorded(
                delivery_id,
                ids & fresh,
                ids & unresolved,
                [n in found for n in places],
                [(n - first, *failed[n]) for n in places if n in failed],
                [wait for wait, message_id in replied if message_id in ids],
            )
        )
        fresh -= ids  # a message id in two deliveries is fresh in the first only
        first = places.stop
    return answers


# --- what webhooks say of business numbers and accounts (rare: the transaction after INGEST) -----------

# (phone_number_id, display digits) pairs this process saw committed, per engine: as for the accounts
# (template/repository.py: record_accounts), the cache only spares the hot path a statement.
_numbers: "weakref.WeakKeyDictionary[Engine, set[tuple[str, str]]]" = weakref.WeakKeyDictionary()


def numbers_known(engine: Engine, pairs: Iterable[tuple[str, str]]) -> bool:
    """True when every pair is known committed, so `record_numbers` would write nothing."""
    seen = _numbers.get(engine, set())
    return all(p in seen for p in pairs)


async def record_numbers(conn: AsyncConnection, pairs: Iterable[tuple[str, str]]) -> None:
    """phone_number_id → display number as webhooks' metadata tell it: quality updates name only the latter."""
    seen = _numbers.setdefault(conn.sync_engine, set())
    todo = dict(sorted(p for p in pairs if p not in seen))
    if not todo:
        return
    u = (
        func.unnest(literal(list(todo), ARRAY(Text)), literal(list(todo.values()), ARRAY(Text)))
        .table_valued("phone_number_id", "display_phone_number")
        .render_derived(name="u")
    )
    q = aliased(PhoneNumber, name="q")
    new = select(u.c.phone_number_id, u.c.display_phone_number).where(
        ~exists().where(
            q.phone_number_id == u.c.phone_number_id, q.display_phone_number == u.c.display_phone_number
        )
    )
    statement = upsert(PhoneNumber).from_select(["phone_number_id", "display_phone_number"], new)
    statement = statement.on_conflict_do_update(
        index_elements=[PhoneNumber.phone_number_id],
        set_={"display_phone_number": statement.excluded.display_phone_number},
        where=PhoneNumber.display_phone_number.is_distinct_from(statement.excluded.display_phone_number),
    )
    written = {
        row.phone_number_id for row in await conn.execute(statement.returning(PhoneNumber.phone_number_id))
    }
    seen.update((pn, display) for pn, display in todo.items() if pn not in written)


@dataclass(frozen=True, slots=True)
class Echo:
    message_id: str
    phone_number_id: str
    recipient: str | None
    recipient_user_id: str | None
    type: str
    sent_at: datetime


async def record_echoes(conn: AsyncConnection, echoes: Sequence[Echo]) -> None:
    """Each echo once: Meta delivers again what it thinks was lost."""
    if echoes:
        rows = [asdict(e) for e in sorted(echoes, key=lambda e: e.message_id)]
        await conn.execute(upsert(MessageEcho).values(rows).on_conflict_do_nothing())


async def record_quality(
    conn: AsyncConnection, display_phone_number: str, event: str, tier: str | None, at: datetime
) -> bool:
    """Meta's latest quality event (and messaging limit, when it names one) on the number with that display
    number; an older event delivered late changes nothing. False: no number is known by that display number."""
    newer = func.coalesce(PhoneNumber.quality_updated_at <= at, True)
    values: dict[str, Any] = {
        "quality_event": case((newer, event), else_=PhoneNumber.quality_event),
        "quality_updated_at": func.greatest(PhoneNumber.quality_updated_at, at),
    }
    if tier is not None:
        values["messaging_limit_tier"] = case((newer, tier), else_=PhoneNumber.messaging_limit_tier)
    statement = (
        update(PhoneNumber)
        .where(PhoneNumber.display_phone_number == display_phone_number)
        .values(values)
        .returning(PhoneNumber.phone_number_id)
    )
    return bool((await conn.execute(statement)).first())


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """The facts one account_update gives (None: not in this event), as of `at`."""

    waba_id: str
    at: datetime
    restrictions: list[dict[str, Any]] | None = None
    ban_state: str | None = None
    ban_date: str | None = None
    # (pricing category/region, Meta's volume_tier_info with its tier_update_time as Unix seconds)
    volume_tier: tuple[str, dict[str, Any]] | None = None
    auth_international: dict[str, Any] | None = None


async def record_account(conn: AsyncConnection, facts: AccountFacts) -> None:
    """Each fact of the account moves only forward in Meta's time: a late older event changes nothing. A
    volume tier is kept per pricing category and region, the latest `tier_update_time` each."""

    def at(fact: object) -> datetime | None:
        return None if fact is None else facts.at

    statement = upsert(BusinessAccount).values(
        waba_id=facts.waba_id,
        restrictions=null() if facts.restrictions is None else facts.restrictions,
        restrictions_at=at(facts.restrictions),
        ban_state=facts.ban_state,
        ban_date=facts.ban_date,
        ban_at=at(facts.ban_state),
        volume_tiers=dict([facts.volume_tier]) if facts.volume_tier else {},
        auth_international=null() if facts.auth_international is None else facts.auth_international,
        auth_international_at=at(facts.auth_international),
    )
    new, old = statement.excluded, BusinessAccount
    never = literal_column("'-infinity'", TZ)

    def latest(fact: str, when: str) -> Any:
        """The new fact when it is at least as recent as the kept one (a NULL time: not in this event)."""
        newer = new[when] >= func.coalesce(getattr(old, when), never)
        return case((newer, new[fact]), else_=getattr(old, fact))

    tiers: Any = old.volume_tiers
    if facts.volume_tier:
        key, tier = facts.volume_tier
        kept = func.coalesce(cast(old.volume_tiers[(key, "tier_update_time")].astext, BigInteger), -1)
        merged = old.volume_tiers.op("||", return_type=JSONB)(new.volume_tiers)
        tiers = case((kept <= tier["tier_update_time"], merged), else_=old.volume_tiers)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[BusinessAccount.waba_id],
            set_={
                "restrictions": latest("restrictions", "restrictions_at"),
                "restrictions_at": func.greatest(old.restrictions_at, new.restrictions_at),
                "ban_state": latest("ban_state", "ban_at"),
                "ban_date": latest("ban_date", "ban_at"),
                "ban_at": func.greatest(old.ban_at, new.ban_at),
                "volume_tiers": tiers,
                "auth_international": latest("auth_international", "auth_international_at"),
                "auth_international_at": func.greatest(old.auth_international_at, new.auth_international_at),
                "updated_at": func.now(),
            },
        )
    )
