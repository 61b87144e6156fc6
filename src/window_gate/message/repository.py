"""Every SQL statement about sent messages and their history."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import (
    ColumnElement,
    Float,
    Row,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    extract,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from window_gate.db import HotPool, Rows, Statement
from window_gate.message.status import MessageStatus
from window_gate.models import (
    TZ,
    ApiKey,
    Continuation,
    Customer,
    CustomerAlias,
    HeldMessage,
    Message,
    MessageEvent,
    MessageKey,
    PhoneNumber,
    Window,
)

# A lookup by id names the send's month, so that PostgreSQL searches one partition of `messages`
# (partitions.py) instead of each: `message_made_after(id)` (migration 0019; SQL, so that webhook ingest
# names it too, row by row) is the time in its UUIDv7 (service.new_id) less a day for clocks; an id from
# before UUIDv7, no bound. An Idempotency-Key's send: from the key's own created_at, less the same day.
# Not FINISH: a bound from its parameters makes PostgreSQL plan each run anew (a custom plan prunes, so it
# looks cheaper than the cached generic one), which costs more than probing each month's index
# (bench/months.py).
CLOCK_SLACK = timedelta(days=1)

# The record, its estimate and its first event in one round trip, which also reads the number's own token
# (encrypted: the service opens it, crypto.Sealer). An Idempotency-Key is claimed first: when it is taken,
# nothing is written. The key and the send share `created_at` (now(): the transaction's start).
INSERT_PENDING = Statement(
    """
WITH k AS (
  INSERT INTO message_keys (api_key_id, idempotency_key, message_id, created_at)
  SELECT :api_key_id, :idempotency_key, :id, now() WHERE CAST(:idempotency_key AS text) IS NOT NULL
  ON CONFLICT DO NOTHING
  RETURNING message_id
), m AS (
  INSERT INTO messages (id, api_key_id, idempotency_key, request_hash, phone_number_id, recipient_input, type,
                        body, "window", status, pricing_category, market, billable, estimated_amount, currency,
                        inside_csw, inside_fep)
  SELECT :id, :api_key_id, :idempotency_key, :request_hash, :phone_number_id, :recipient_input, :type,
         CAST(:body AS jsonb), CAST(:window AS jsonb), 'pending', :pricing_category, :market, :billable,
         :estimated_amount, :currency, :inside_csw, :inside_fep
  WHERE CAST(:idempotency_key AS text) IS NULL OR EXISTS (SELECT FROM k)
  RETURNING id, phone_number_id
), e AS (
  INSERT INTO message_events (phone_number_id, message_id, status, at)
  SELECT phone_number_id, id, 'pending', :at FROM m RETURNING message_id
)
SELECT (SELECT access_token_encrypted FROM phone_numbers WHERE phone_number_id = :phone_number_id) AS access_token FROM e
"""
)
# A status webhook may overtake Meta's synchronous answer: the answer is stored either way, and the status
# only moves when nothing later is known yet. Written once: a retried write whose first try committed
# unseen (the connection broke after the commit) changes nothing.
FINISH = Statement(
    """
WITH u AS (
  UPDATE messages SET status = CASE WHEN status IN ('pending', 'unknown') THEN :status ELSE status END,
         graph_message_id = COALESCE(graph_message_id, :graph_message_id), recipient_wa_id = :wa_id,
         error = COALESCE(error, CAST(:error AS jsonb)), response_status = :response_status,
         response = CAST(:response AS jsonb), updated_at = now()
  WHERE id = :id AND response IS NULL
  RETURNING id, phone_number_id
), e AS (  -- a status webhook may have recorded the same (status, at) first
  INSERT INTO message_events (phone_number_id, message_id, status, at, detail)
  SELECT phone_number_id, id, :status, :at, CAST(:error AS jsonb) FROM u
  ON CONFLICT (phone_number_id, message_id, status, at) DO NOTHING
)
SELECT id AS message_id FROM u
"""
)


# Built once (SQLAlchemy then only keys its cache per call): replays run it per request.
# `age` by the database's clock, the same for every replica; from the last move (a held message is
# `pending` from its release, not from its acceptance).
BY_IDEMPOTENCY_KEY = (
    select(
        Message.id,
        Message.request_hash,
        Message.status,
        Message.response_status,
        Message.response,
        Message.graph_message_id,
        Message.recipient_input,
        Message.recipient_wa_id,
        Message.window,
        cast(extract("epoch", func.clock_timestamp() - Message.updated_at), Float).label("age"),
    )
    .join_from(
        MessageKey,
        Message,
        and_(Message.id == MessageKey.message_id, Message.created_at >= MessageKey.created_at - CLOCK_SLACK),
    )
    .where(MessageKey.api_key_id == bindparam("api_key_id"), MessageKey.idempotency_key == bindparam("key"))
)


@dataclass(frozen=True, slots=True)
class Previous:
    id: UUID
    request_hash: str
    status: str
    response_status: int | None
    response: dict[str, Any] | None
    graph_message_id: str | None
    recipient_input: str
    recipient_wa_id: str | None
    window: dict[str, Any] | None
    age: float  # seconds since it was recorded (or released, if it was held)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


ACCESS_TOKEN = select(PhoneNumber.access_token_encrypted).where(
    PhoneNumber.phone_number_id == bindparam("id")
)


async def access_token(conn: AsyncConnection, phone_number_id: str) -> str | None:
    """The number's own token, encrypted; None: WINDOW_GATE_GRAPH_ACCESS_TOKEN."""
    token: str | None = (await conn.execute(ACCESS_TOKEN, {"id": phone_number_id})).scalar()
    return token


@dataclass(frozen=True, slots=True)
class Pending:
    access_token: str | None  # the number's own, if it has one: encrypted (crypto.Sealer opens it)


async def insert_pending(
    conn: AsyncConnection | Rows,
    *,
    id: UUID,
    api_key_id: str,
    idempotency_key: str | None,
    request_hash: str,
    phone_number_id: str,
    recipient_input: str,
    type: str,
    body: dict[str, Any],
    window: dict[str, Any],
    estimate: dict[str, Any],
    at: datetime,
) -> Pending | None:
    """Record a send before it leaves; None when the Idempotency-Key is already taken."""
    row = await INSERT_PENDING.run(
        conn,
        {
            "id": id,
            "api_key_id": api_key_id,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "phone_number_id": phone_number_id,
            "recipient_input": recipient_input,
            "type": type,
            "body": _json(body),
            "window": _json(window),
            "at": at,
            **estimate,
        },
    )
    return Pending(row["access_token"]) if row else None


async def finish(conn: AsyncConnection | Rows, final: Mapping[str, Any]) -> bool:
    """Meta's synchronous answer (or its absence), the final word of this request: `final` holds its id,
    status, at, graph_message_id, wa_id, error, response_status and response. False when it was already
    written."""
    return await FINISH.run(conn, _final(final)) is not None


async def finish_all(hot: HotPool, finals: Sequence[Mapping[str, Any]]) -> None:
    """`finish` for many sends in one round trip, all or none (a release round's answers)."""
    await hot.executemany(FINISH.sql, [tuple(_final(f)[n] for n in FINISH.names) for f in finals])


def _final(final: Mapping[str, Any]) -> dict[str, Any]:
    return {**final, "error": _json(final["error"]), "response": _json(final["response"])}


async def by_idempotency_key(conn: AsyncConnection, api_key_id: str, key: str) -> Previous | None:
    row = (await conn.execute(BY_IDEMPOTENCY_KEY, {"api_key_id": api_key_id, "key": key})).first()
    return Previous(**row._asdict()) if row else None


async def get(conn: AsyncConnection, id: UUID) -> tuple[Row[Any], list[Row[Any]]] | None:
    made_after = func.message_made_after(id, type_=TZ)
    mine = select(Message.__table__).where(Message.id == id, Message.created_at >= made_after)
    row = (await conn.execute(mine)).first()
    if row is None:
        return None
    events = select(MessageEvent.status, MessageEvent.at, MessageEvent.detail).where(
        MessageEvent.phone_number_id == row.phone_number_id, MessageEvent.message_id == id
    )
    return row, list(await conn.execute(events.order_by(MessageEvent.id)))


async def expire_pending(conn: AsyncConnection, seconds: float) -> int:
    """Sends whose process died between recording and Meta's answer: outcome unknown, never re-sent."""
    expired = (
        update(Message)
        .where(
            Message.response.is_(None),  # always, while pending: what its index covers
            Message.status == "pending",
            Message.created_at < func.now() - timedelta(seconds=seconds),
            Message.updated_at < func.now() - timedelta(seconds=seconds),  # a held one: since its release
        )
        .values(status="unknown", updated_at=func.now())
        .returning(Message.id)
    )
    return len((await conn.execute(expired)).all())


async def forget_keys(conn: AsyncConnection) -> int:
    """The Idempotency-Keys of sends no longer kept (their month's partition dropped past retention)."""
    oldest = select(func.min(Message.created_at)).scalar_subquery()
    gone = delete(MessageKey).where(or_(MessageKey.created_at < oldest, oldest.is_(None)))
    return (await conn.execute(gone)).rowcount


# --- continue the conversation: held messages and the waits they are in (message/held.py) --------------
WAITING_STATES = ("sending", "awaiting_reply")

# Held messages leave their wait to be sent: `pending` as any send, each with the window and price of now.
# Only one claimant gets each (the held row is deleted once); a cancelled or expired one is not claimed.
# A release round claims many of one number in this one statement (the number's token read once).
CLAIM_HELD = Statement(
    """
WITH c AS (
  SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:windows AS jsonb[]), CAST(:pricing_category AS text[]),
                       CAST(:market AS text[]), CAST(:billable AS boolean[]), CAST(:estimated_amount AS numeric[]),
                       CAST(:currency AS text[]), CAST(:inside_csw AS boolean[]), CAST(:inside_fep AS boolean[]))
    AS c (id, "window", pricing_category, market, billable, estimated_amount, currency, inside_csw, inside_fep)
), h AS (
  DELETE FROM held_messages WHERE phone_number_id = :phone_number_id AND message_id IN (SELECT id FROM c)
  RETURNING message_id
), m AS (
  UPDATE messages SET status = 'pending', "window" = c."window", pricing_category = c.pricing_category,
    market = c.market, billable = c.billable, estimated_amount = c.estimated_amount, currency = c.currency,
    inside_csw = c.inside_csw, inside_fep = c.inside_fep, response_status = NULL, response = NULL, updated_at = now()
  FROM c WHERE messages.phone_number_id = :phone_number_id AND messages.id = c.id
    AND messages.id IN (SELECT message_id FROM h) AND messages.status = 'held'
  RETURNING messages.id
), e AS (
  INSERT INTO message_events (phone_number_id, message_id, status, at)
  SELECT :phone_number_id, id, 'pending', :at FROM m RETURNING message_id
)
SELECT message_id AS id,
       (SELECT access_token_encrypted FROM phone_numbers WHERE phone_number_id = :phone_number_id) AS access_token
FROM e
"""
)


@dataclass(frozen=True, slots=True)
class Wait:
    id: UUID
    state: str
    template_message_id: UUID | None
    reason: dict[str, Any] | None


WAIT = select(Continuation.id, Continuation.state, Continuation.template_message_id, Continuation.reason)


async def lock_conversation(conn: AsyncConnection, phone_number_id: str, customer_id: int) -> None:
    """Until the transaction ends: one request at a time decides to start, or join, this pair's wait."""
    key = func.hashtextextended(literal(f"continuation:{phone_number_id}:{customer_id}"), 0)
    await conn.execute(select(func.pg_advisory_xact_lock(key)))


async def waiting(conn: AsyncConnection, phone_number_id: str, customer_id: int) -> Wait | None:
    """The pair's wait being started (`sending`) or awaiting the reply, if any (at most one)."""
    row = (
        await conn.execute(
            WAIT.where(
                Continuation.phone_number_id == phone_number_id,
                Continuation.customer_id == customer_id,
                Continuation.state.in_(WAITING_STATES),
            )
        )
    ).first()
    return Wait(*row) if row else None


async def wait_by_id(conn: AsyncConnection, id: UUID) -> Wait | None:
    row = (await conn.execute(WAIT.where(Continuation.id == id))).first()
    return Wait(*row) if row else None


async def start_wait(
    conn: AsyncConnection, id: UUID, phone_number_id: str, customer_id: int, api_key_id: str
) -> None:
    await conn.execute(
        insert(Continuation).values(
            id=id,
            phone_number_id=phone_number_id,
            customer_id=customer_id,
            api_key_id=api_key_id,
            state="sending",
        )
    )


async def settle_wait(
    conn: AsyncConnection,
    id: UUID,
    state: str,
    *,
    from_states: tuple[str, ...],
    template_message_id: UUID | None = None,
    reason: dict[str, Any] | None = None,
) -> bool:
    """Move a wait on, only from `from_states` (a concurrent chore may have moved it first)."""
    values: dict[str, Any] = {"state": state, "updated_at": func.now()}
    if template_message_id is not None:
        values["template_message_id"] = template_message_id
    if reason is not None:
        values["reason"] = reason
    moved = await conn.execute(
        update(Continuation)
        .where(Continuation.id == id, Continuation.state.in_(from_states))
        .values(**values)
        .returning(Continuation.id)
    )
    return moved.first() is not None


async def insert_held(
    conn: AsyncConnection,
    *,
    id: UUID,
    continuation_id: UUID,
    api_key_id: str,
    idempotency_key: str | None,
    request_hash: str,
    phone_number_id: str,
    recipient_input: str,
    type: str,
    body: dict[str, Any],
    window: dict[str, Any],
    response: dict[str, Any],
    hold_until: datetime,
    at: datetime,
) -> bool:
    """Hold a message in a wait, with its 202 answer (replayed for its Idempotency-Key while it waits);
    False when that key is taken."""
    if idempotency_key is not None:
        key = (
            upsert(MessageKey)
            .values(
                api_key_id=api_key_id, idempotency_key=idempotency_key, message_id=id, created_at=func.now()
            )
            .on_conflict_do_nothing()
            .returning(MessageKey.message_id)
        )
        if (await conn.execute(key)).first() is None:
            return False
    message = insert(Message).values(
        id=id,
        api_key_id=api_key_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        phone_number_id=phone_number_id,
        recipient_input=recipient_input,
        type=type,
        body=body,
        window=window,
        status=MessageStatus.HELD,
        response_status=202,
        response=response,
    )
    await conn.execute(message)
    await conn.execute(
        insert(MessageEvent).values(
            phone_number_id=phone_number_id, message_id=id, status=MessageStatus.HELD, at=at
        )
    )
    await conn.execute(
        insert(HeldMessage).values(
            phone_number_id=phone_number_id,
            message_id=id,
            continuation_id=continuation_id,
            hold_until=hold_until,
        )
    )
    return True


async def default_template(conn: AsyncConnection, phone_number_id: str) -> dict[str, Any] | None:
    template: dict[str, Any] | None = (
        await conn.execute(
            select(PhoneNumber.default_reengagement_template).where(
                PhoneNumber.phone_number_id == phone_number_id
            )
        )
    ).scalar()
    return template


@dataclass(frozen=True, slots=True)
class Held:
    """A held message as a release reads it, with the key that asked for it."""

    id: UUID
    continuation_id: UUID
    phone_number_id: str
    recipient_input: str
    type: str
    body: dict[str, Any]
    request_hash: str
    hold_until: datetime
    api_key_id: UUID
    key_name: str
    role: str
    key_numbers: list[str] | None


HELD_IN_WAIT = and_(
    HeldMessage.phone_number_id == Continuation.phone_number_id,
    HeldMessage.continuation_id == Continuation.id,
)


def _in_share(shard: int, shards: int) -> ColumnElement[bool]:
    """A wait's share: the last byte of its id, modulo `shards` (a divisor of 256)."""
    return func.get_byte(func.uuid_send(Continuation.id), 15) % shards == shard


async def next_held_of_replied(conn: AsyncConnection, shard: int, shards: int, limit: int) -> list[Held]:
    """The oldest held message (the order they were accepted in) of up to `limit` replied waits of one
    share (`_in_share`)."""
    query = (
        select(
            Message.id,
            HeldMessage.continuation_id,
            Message.phone_number_id,
            Message.recipient_input,
            Message.type,
            Message.body,
            Message.request_hash,
            HeldMessage.hold_until,
            ApiKey.id,
            ApiKey.name,
            ApiKey.role,
            ApiKey.phone_number_ids,
        )
        .ext(distinct_on(HeldMessage.continuation_id))
        .join(Continuation, HELD_IN_WAIT)
        .join(
            Message,
            and_(
                Message.phone_number_id == HeldMessage.phone_number_id, Message.id == HeldMessage.message_id
            ),
        )
        .join(ApiKey, ApiKey.id == Message.api_key_id)
        .where(
            Continuation.state == "replied",
            _in_share(shard, shards),
        )
        .order_by(HeldMessage.continuation_id, HeldMessage.position)
        .limit(limit)
    )
    return [Held(*row) for row in await conn.execute(query)]


async def settle_released(conn: AsyncConnection, shard: int, shards: int) -> None:
    """Replied waits of one share with nothing left held: `released` (a share's job settles its own only:
    the shares' jobs run side by side and would otherwise wait on each other's rows)."""
    await conn.execute(
        update(Continuation)
        .where(
            Continuation.state == "replied",
            _in_share(shard, shards),
            ~exists().where(HELD_IN_WAIT),
        )
        .values(state="released", updated_at=func.now())
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """A held message to take out of its wait: the window and estimate columns it leaves with."""

    id: UUID
    window: dict[str, Any]
    estimate: dict[str, Any]  # pricing.estimate_columns


async def claim_held(
    conn: Rows | AsyncConnection, phone_number_id: str, claims: Sequence[Claim], at: datetime
) -> dict[UUID, Pending]:
    """Take held messages of one number out of their wait, `pending`: those still held, by id."""
    columns = (
        "pricing_category",
        "market",
        "billable",
        "estimated_amount",
        "currency",
        "inside_csw",
        "inside_fep",
    )
    rows = await CLAIM_HELD.all(
        conn,
        {
            "ids": [c.id for c in claims],
            "windows": [_json(c.window) for c in claims],
            **{name: [c.estimate[name] for c in claims] for name in columns},
            "phone_number_id": phone_number_id,
            "at": at,
        },
    )
    return {row["id"]: Pending(row["access_token"]) for row in rows}


@dataclass(frozen=True, slots=True)
class Ended:
    """A held message that left its wait unsent."""

    id: UUID
    phone_number_id: str
    continuation_id: UUID
    wa_id: str | None
    user_id: str | None


async def end_held(
    conn: AsyncConnection, ids: Sequence[UUID], status: str, error: object, at: datetime
) -> list[Ended]:
    """Held messages out of their wait, unsent: `expired`, `cancelled` or `failed` (with `error`). Those
    no longer held (released or ended meanwhile) are left alone."""
    if not ids:
        return []
    taken = delete(HeldMessage).where(HeldMessage.message_id.in_(ids))
    waits = dict(
        (await conn.execute(taken.returning(HeldMessage.message_id, HeldMessage.continuation_id))).all()
    )
    if not waits:
        return []
    ended = (
        update(Message)
        .where(Message.id.in_(list(waits)), Message.status == MessageStatus.HELD)
        .values(status=status, error=error, updated_at=func.now())
        .returning(Message.id, Message.phone_number_id)
    )
    numbers = dict((await conn.execute(ended)).all())
    if not numbers:
        return []
    await conn.execute(
        insert(MessageEvent),
        [
            {"phone_number_id": pn, "message_id": m, "status": status, "at": at, "detail": error}
            for m, pn in numbers.items()
        ],
    )
    people = select(Continuation.id, Customer.wa_id, Customer.user_id).join(
        Customer, Customer.id == Continuation.customer_id
    )
    who = {
        row[0]: (row[1], row[2])
        for row in await conn.execute(people.where(Continuation.id.in_(set(waits.values()))))
    }
    return [Ended(m, pn, waits[m], *who.get(waits[m], (None, None))) for m, pn in numbers.items()]


async def held_ids(conn: AsyncConnection, continuation_id: UUID) -> list[UUID]:
    query = (
        select(HeldMessage.message_id)
        .where(HeldMessage.continuation_id == continuation_id)
        .order_by(HeldMessage.position)
    )
    return list((await conn.execute(query)).scalars())


async def due_expiries(conn: AsyncConnection, limit: int) -> list[UUID]:
    query = (
        select(HeldMessage.message_id)
        .where(HeldMessage.hold_until <= func.now())
        .order_by(HeldMessage.hold_until)
        .limit(limit)
    )
    return list((await conn.execute(query)).scalars())


@dataclass(frozen=True, slots=True)
class OpenWait:
    """A wait not over, with what the chore needs to move it on."""

    id: UUID
    state: str
    age: float  # seconds since it last moved
    template_status: str | None  # its template send's, found by the id or by the key it was sent with
    template_id: UUID | None
    template_error: dict[str, Any] | None
    held: int  # messages still waiting in it
    answered: bool  # the customer wrote since it started (a reply ingest's statement could not mark)


# The re-engagement template is sent under the requesting key with this Idempotency-Key (+ the wait's
# id): a wait whose process died while Meta answered still finds its template's outcome.
TEMPLATE_KEY_PREFIX = "wg-continuation:"

# Every wait not over, with its template send: by the id the wait knows, else by the key it was sent with
# (message_keys). By index either way: the chore runs every second, on a table of every send ever made.
TEMPLATE_SEND = aliased(Message, name="template")
OPEN_WAITS = (
    select(
        Continuation.id,
        Continuation.state,
        cast(extract("epoch", func.now() - Continuation.updated_at), Float),
        TEMPLATE_SEND.status,
        TEMPLATE_SEND.id,
        TEMPLATE_SEND.error,
        select(func.count()).where(HELD_IN_WAIT).scalar_subquery(),
        exists().where(
            Window.phone_number_id == Continuation.phone_number_id,
            Window.customer_id == Continuation.customer_id,
            Window.last_inbound_at >= func.date_trunc("second", Continuation.created_at),
        ),
    )
    .select_from(Continuation)
    .outerjoin(
        TEMPLATE_SEND,
        and_(
            TEMPLATE_SEND.phone_number_id == Continuation.phone_number_id,
            TEMPLATE_SEND.id
            == func.coalesce(
                Continuation.template_message_id,
                select(MessageKey.message_id)
                .where(
                    MessageKey.api_key_id == Continuation.api_key_id,
                    MessageKey.idempotency_key
                    == func.concat(TEMPLATE_KEY_PREFIX, cast(Continuation.id, Text)),
                )
                .scalar_subquery(),
            ),
        ),
    )
    .where(Continuation.state.in_(("sending", "awaiting_reply", "replied")))
)


async def open_waits(conn: AsyncConnection) -> list[OpenWait]:
    """Every wait not over (few: each is one customer who has not answered yet)."""
    return [OpenWait(*row) for row in await conn.execute(OPEN_WAITS)]


@dataclass(frozen=True, slots=True)
class Conversation:
    id: UUID
    state: str
    template_message_id: UUID | None
    reason: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    held: list[UUID]


async def latest_wait(
    conn: AsyncConnection, phone_number_id: str, aliases: Sequence[str]
) -> Conversation | None:
    """The pair's latest wait (over or not), found by any spelling of the customer, with what it holds."""
    query = (
        select(
            Continuation.id,
            Continuation.state,
            Continuation.template_message_id,
            Continuation.reason,
            Continuation.created_at,
            Continuation.updated_at,
        )
        .join(CustomerAlias, CustomerAlias.customer_id == Continuation.customer_id)
        .where(Continuation.phone_number_id == phone_number_id, CustomerAlias.alias.in_(list(aliases)))
        .order_by(Continuation.created_at.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return Conversation(**row._asdict(), held=await held_ids(conn, row.id))
