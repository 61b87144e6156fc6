"""Every SQL statement about subscriptions and their outbox (relay_deliveries, relay_attempts).

The outbox rows of `meta.webhook` are written by webhook ingest's own statement (webhook/repository.py:
INGEST, which names these tables in SQL); the gate's events by `emit`, on the caller's transaction."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import (
    BigInteger,
    Integer,
    Text,
    Uuid,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.db import AnyRow
from window_gate.models import (
    RELAY_DUE_STATES,
    TZ,
    Customer,
    IngestPressure,
    RelayAttempt,
    RelayDelivery,
    RelayFanout,
    Subscription,
    WebhookDelivery,
    Window,
    WindowAlarm,
)

DUE_STATES = RELAY_DUE_STATES


async def create(
    conn: AsyncConnection,
    *,
    url: str,
    events: Sequence[str],
    phone_number_ids: Sequence[str] | None,
    description: str | None,
    secret: str,
) -> AnyRow:
    values = {
        "url": url,
        "events": list(events),
        "phone_number_ids": None if phone_number_ids is None else list(phone_number_ids),
        "description": description,
        "secret": secret,
    }
    return (await conn.execute(insert(Subscription).values(values).returning(Subscription))).one()


async def listing(conn: AsyncConnection) -> Sequence[AnyRow]:
    return (await conn.execute(select(Subscription).order_by(Subscription.created_at, Subscription.id))).all()


async def set_secret(conn: AsyncConnection, subscription_id: UUID, secret: str) -> None:
    await conn.execute(update(Subscription).where(Subscription.id == subscription_id).values(secret=secret))


async def get(conn: AsyncConnection, subscription_id: UUID) -> AnyRow | None:
    return (await conn.execute(select(Subscription).where(Subscription.id == subscription_id))).one_or_none()


async def remove(conn: AsyncConnection, subscription_id: UUID) -> bool:
    """Gone with its deliveries, sent or not (and their attempts: a foreign key's cascade)."""
    await conn.execute(delete(RelayDelivery).where(RelayDelivery.subscription_id == subscription_id))
    gone = await conn.execute(delete(Subscription).where(Subscription.id == subscription_id))
    return gone.rowcount > 0


async def deliveries(
    conn: AsyncConnection, subscription_id: UUID, state: str | None, before: int | None, limit: int
) -> Sequence[AnyRow]:
    """Newest first, each with its attempts (oldest first)."""
    attempts = (
        select(
            func.coalesce(
                func.jsonb_agg(
                    aggregate_order_by(
                        func.jsonb_build_object(
                            "at",
                            RelayAttempt.at,
                            "status_code",
                            RelayAttempt.status_code,
                            "error",
                            RelayAttempt.error,
                            "duration_ms",
                            RelayAttempt.duration_ms,
                        ),
                        RelayAttempt.id,
                    )
                ),
                literal_column("'[]'::jsonb"),
            )
        )
        .where(RelayAttempt.delivery_id == RelayDelivery.id)
        .scalar_subquery()
    )
    query = (
        select(
            RelayDelivery.id,
            RelayDelivery.event_id,
            RelayDelivery.event_type,
            RelayDelivery.state,
            RelayDelivery.created_at,
            RelayDelivery.next_attempt_at,
            attempts.label("attempts"),
        )
        .where(RelayDelivery.subscription_id == subscription_id)
        .order_by(RelayDelivery.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(RelayDelivery.state == state)
    if before is not None:
        query = query.where(RelayDelivery.id < before)
    return (await conn.execute(query)).all()


async def retry(conn: AsyncConnection, subscription_id: UUID, delivery_id: int) -> AnyRow | None:
    """Due now, with a fresh RELAY_RETRY_HOURS; its attempts so far are kept, its event id too."""
    statement = (
        update(RelayDelivery)
        .where(RelayDelivery.id == delivery_id, RelayDelivery.subscription_id == subscription_id)
        .values(state="pending", next_attempt_at=func.now(), retry_from=func.now())
        .returning(RelayDelivery.id, RelayDelivery.event_id, RelayDelivery.event_type, RelayDelivery.state)
    )
    return (await conn.execute(statement)).one_or_none()


@dataclass(frozen=True, slots=True)
class Event:
    """One of the gate's own events (rules.GATE_EVENTS); its JSON is made by the database's
    gate_event(...), as for the events webhook ingest's statement emits."""

    type: str
    occurred_at: datetime
    phone_number_id: str | None
    wa_id: str | None
    user_id: str | None
    data: dict[str, Any]
    id: UUID = field(default_factory=uuid4)


async def emit(conn: AsyncConnection, events: Sequence[Event]) -> None:
    """One outbox row per event per subscription that wants it, in the caller's transaction."""
    if not events:
        return
    u = (
        func.unnest(
            literal([e.id for e in events], ARRAY(Uuid())),
            literal([e.type for e in events], ARRAY(Text)),
            literal([e.occurred_at for e in events], ARRAY(TZ)),
            literal([e.phone_number_id for e in events], ARRAY(Text)),
            literal([e.wa_id for e in events], ARRAY(Text)),
            literal([e.user_id for e in events], ARRAY(Text)),
            literal([e.data for e in events], ARRAY(JSONB)),
        )
        .table_valued("id", "type", "at", "phone_number_id", "wa_id", "user_id", "data")
        .render_derived(name="u")
    )
    body = func.gate_event(u.c.id, u.c.type, u.c.at, u.c.phone_number_id, u.c.wa_id, u.c.user_id, u.c.data)
    wanted = select(Subscription.id, u.c.id, u.c.type, body).join(
        Subscription,
        and_(
            u.c.type == func.any(Subscription.events),
            or_(
                Subscription.phone_number_ids.is_(None),
                u.c.phone_number_id == func.any(Subscription.phone_number_ids),
            ),
        ),
    )
    await conn.execute(
        insert(RelayDelivery).from_select(["subscription_id", "event_id", "event_type", "body"], wanted)
    )


def iso(at: datetime) -> str:
    """A time in the events' data, as the database's gate_time(...) writes it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def relay_unparsed(conn: AsyncConnection, webhook_delivery_id: int) -> None:
    """A signed delivery the gate could not read names no number: it goes to every `meta.webhook`
    subscriber that is not filtered by numbers."""
    wanted = select(
        Subscription.id, func.gen_random_uuid(), literal("meta.webhook"), literal(webhook_delivery_id)
    ).where(literal("meta.webhook") == func.any(Subscription.events), Subscription.phone_number_ids.is_(None))
    await conn.execute(
        insert(RelayDelivery).from_select(
            ["subscription_id", "event_id", "event_type", "webhook_delivery_id"], wanted
        )
    )


# --- the dispatcher -------------------------------------------------------------------------------------


def _due(now: Any) -> Any:
    return and_(RelayDelivery.state.in_(DUE_STATES), RelayDelivery.next_attempt_at <= now)


async def due_subscriptions(conn: AsyncConnection) -> list[UUID]:
    """Subscriptions with something due."""
    query = select(Subscription.id).where(
        exists().where(RelayDelivery.subscription_id == Subscription.id, _due(func.now()))
    )
    return list((await conn.execute(query)).scalars())


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    event_id: UUID
    event_type: str
    body: bytes
    attempts: int  # before this one
    retry_from: datetime


CLAIM = (
    select(
        RelayDelivery.id,
        RelayDelivery.event_id,
        RelayDelivery.event_type,
        func.coalesce(RelayDelivery.body, WebhookDelivery.body).label("body"),
        RelayDelivery.attempts,
        RelayDelivery.retry_from,
    )
    .outerjoin(WebhookDelivery, WebhookDelivery.id == RelayDelivery.webhook_delivery_id)
    .where(RelayDelivery.subscription_id == bindparam("sub"), _due(func.now()))
    .order_by(RelayDelivery.next_attempt_at, RelayDelivery.id)
    .limit(bindparam("n"))
    .with_for_update(of=RelayDelivery, skip_locked=True)
)


# Up to :n kept Meta deliveries, oldest first, made into one outbox row per subscriber that wants them and
# existed when each was received, due from then; taken with SKIP LOCKED, so two dispatchers at once never
# make one twice. Its rows' count: how many were fanned out.
FAN_OUT = text(
    """
WITH taken AS (
  DELETE FROM relay_fanout WHERE webhook_delivery_id IN (
    SELECT webhook_delivery_id FROM relay_fanout ORDER BY webhook_delivery_id LIMIT :n FOR UPDATE SKIP LOCKED)
  RETURNING *
), made AS (
  INSERT INTO relay_deliveries (subscription_id, event_id, event_type, webhook_delivery_id, created_at,
                                next_attempt_at, retry_from)
  SELECT sub.id, t.event_id, 'meta.webhook', t.webhook_delivery_id, t.created_at, t.created_at, t.created_at
  FROM taken t JOIN subscriptions sub ON 'meta.webhook' = ANY(sub.events) AND sub.created_at <= t.created_at
    AND (sub.phone_number_ids IS NULL OR sub.phone_number_ids && t.phone_number_ids)
  ORDER BY t.webhook_delivery_id, sub.id
)
SELECT count(*) FROM taken
"""
)


async def fan_out(conn: AsyncConnection, n: int) -> int:
    return int((await conn.execute(FAN_OUT, {"n": n})).scalar_one())


async def claim(conn: AsyncConnection, subscription_id: UUID, n: int) -> list[Claimed]:
    """Up to `n` due deliveries, oldest due first, locked until `conn`'s transaction ends (the caller
    writes their outcomes in it; a caller that dies releases them): never claimed by two at once."""
    rows = await conn.execute(CLAIM, {"sub": subscription_id, "n": n})
    return [Claimed(r.id, r.event_id, r.event_type, r.body, r.attempts, r.retry_from) for r in rows]


# Webhook ingest under load, for `seconds` from now (raw SQL: the hot pool's asyncpg runs it).
BUSY = (
    "INSERT INTO ingest_pressure (busy_until) VALUES (now() + make_interval(secs => $1)) "
    "ON CONFLICT (id) DO UPDATE SET busy_until = greatest(ingest_pressure.busy_until, excluded.busy_until)"
)


@dataclass(frozen=True, slots=True)
class Pressure:
    now: datetime
    busy_until: datetime | None  # webhook ingest said it is under load until then
    oldest_due: datetime | None  # the subscription's delivery due first, if any (or the first to fan out)


async def pressure(conn: AsyncConnection, subscription_id: UUID | None) -> Pressure:
    """None: of the deliveries not fanned out yet (the first by id: its primary key's index, no scan)."""
    oldest = (
        select(RelayFanout.created_at).order_by(RelayFanout.webhook_delivery_id).limit(1)
        if subscription_id is None
        else select(func.min(RelayDelivery.next_attempt_at)).where(
            RelayDelivery.subscription_id == subscription_id, _due(func.now())
        )
    )
    row = (
        await conn.execute(
            select(
                func.now(),
                select(IngestPressure.busy_until).scalar_subquery(),
                oldest.scalar_subquery(),
            )
        )
    ).one()
    return Pressure(*row)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery_id: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    state: str  # delivered | failed | dead
    next_attempt_at: datetime


async def finish(conn: AsyncConnection, outcomes: Sequence[Outcome]) -> None:
    """Each attempt recorded, each delivery moved on: one statement for both, whatever the count."""
    if not outcomes:
        return
    u = (
        func.unnest(
            literal([o.delivery_id for o in outcomes], ARRAY(BigInteger)),
            literal([o.at for o in outcomes], ARRAY(TZ)),
            literal([o.status_code for o in outcomes], ARRAY(Integer)),
            literal([o.error for o in outcomes], ARRAY(Text)),
            literal([o.duration_ms for o in outcomes], ARRAY(Integer)),
            literal([o.state for o in outcomes], ARRAY(Text)),
            literal([o.next_attempt_at for o in outcomes], ARRAY(TZ)),
        )
        .table_valued("delivery_id", "at", "status_code", "error", "duration_ms", "state", "next_attempt_at")
        .render_derived(name="u")
    )
    moved = (
        update(RelayDelivery)
        .where(RelayDelivery.id == u.c.delivery_id)
        .values(state=u.c.state, next_attempt_at=u.c.next_attempt_at, attempts=RelayDelivery.attempts + 1)
        .returning(RelayDelivery.id)
        .cte("moved")
    )
    recorded = insert(RelayAttempt).from_select(
        ["delivery_id", "at", "status_code", "error", "duration_ms"],
        select(u.c.delivery_id, u.c.at, u.c.status_code, u.c.error, u.c.duration_ms).where(
            u.c.delivery_id.in_(
                select(moved.c.id)
            )  # a delivery deleted meanwhile (its subscription) has none
        ),
    )
    await conn.execute(recorded.add_cte(moved))


async def purge(conn: AsyncConnection, days: int) -> None:
    """Deliveries sent or dead past retention (a scan, hourly: no index on created_at costs ingest)."""
    await conn.execute(
        delete(RelayDelivery).where(
            RelayDelivery.state.in_(("delivered", "dead")),
            RelayDelivery.created_at < func.now() - timedelta(days=days),
        )
    )


# --- window alarms: window.expiring and window.closed ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rung:
    """An alarm taken: which window, which event, the message it counted from, when it came due; and
    what is known now of the window and its customer."""

    phone_number_id: str
    customer_id: int
    kind: str
    last_inbound_at: datetime
    due_at: datetime
    window_last_inbound_at: datetime | None
    closed_by_meta_at: datetime | None
    wa_id: str | None
    user_id: str | None


async def ring(conn: AsyncConnection, limit: int) -> list[Rung]:
    """Take (delete) up to `limit` alarms come due, oldest first, skipping those another transaction
    holds: each rings once, in the transaction that emits its event."""
    due = (
        select(WindowAlarm.phone_number_id, WindowAlarm.customer_id, WindowAlarm.kind)
        .where(WindowAlarm.due_at <= func.now())
        .order_by(WindowAlarm.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    key = tuple_(WindowAlarm.phone_number_id, WindowAlarm.customer_id, WindowAlarm.kind)
    return await _taken(conn, delete(WindowAlarm).where(key.in_(due)))


async def silence(conn: AsyncConnection, closed: Sequence[tuple[str, int, datetime]]) -> list[Rung]:
    """Meta closed these windows (phone_number_id, customer_id, closed_at): their alarms for the
    message before the closure are taken, to announce the closure now instead."""
    if not closed:
        return []
    v = (
        func.unnest(
            literal([c[0] for c in closed], ARRAY(Text)),
            literal([c[1] for c in closed], ARRAY(BigInteger)),
            literal([c[2] for c in closed], ARRAY(TZ)),
        )
        .table_valued("phone_number_id", "customer_id", "closed_at")
        .render_derived(name="v")
    )
    statement = delete(WindowAlarm).where(
        WindowAlarm.phone_number_id == v.c.phone_number_id,
        WindowAlarm.customer_id == v.c.customer_id,
        WindowAlarm.last_inbound_at <= v.c.closed_at,
    )
    return await _taken(conn, statement)


async def _taken(conn: AsyncConnection, deleting: Any) -> list[Rung]:
    taken = deleting.returning(*WindowAlarm.__table__.c).cte("taken")
    query = (
        select(
            taken.c.phone_number_id,
            taken.c.customer_id,
            taken.c.kind,
            taken.c.last_inbound_at,
            taken.c.due_at,
            Window.last_inbound_at,
            Window.closed_by_meta_at,
            Customer.wa_id,
            Customer.user_id,
        )
        .select_from(taken)
        .join(Customer, Customer.id == taken.c.customer_id)
        .outerjoin(
            Window,
            and_(
                Window.phone_number_id == taken.c.phone_number_id, Window.customer_id == taken.c.customer_id
            ),
        )
        .order_by(taken.c.due_at)
    )
    return [Rung(*row) for row in await conn.execute(query)]
