"""Every SQL statement about sent messages and their history."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import (
    Float,
    Row,
    bindparam,
    cast,
    extract,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.db import Rows, Statement
from window_gate.message.status import MessageStatus
from window_gate.models import Message, MessageEvent, PhoneNumber

# The record, its estimate and its first event in one round trip, which also reads the number's own token.
INSERT_PENDING = Statement(
    """
WITH m AS (
  INSERT INTO messages (id, api_key_id, idempotency_key, request_hash, phone_number_id, recipient_input, type,
                        body, "window", status, pricing_category, market, billable, estimated_amount, currency,
                        inside_csw, inside_fep)
  VALUES (:id, :api_key_id, :idempotency_key, :request_hash, :phone_number_id, :recipient_input, :type,
          CAST(:body AS jsonb), CAST(:window AS jsonb), 'pending', :pricing_category, :market, :billable,
          :estimated_amount, :currency, :inside_csw, :inside_fep)
  ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
  RETURNING id
), e AS (
  INSERT INTO message_events (message_id, status, at) SELECT id, 'pending', :at FROM m RETURNING message_id
)
SELECT (SELECT access_token FROM phone_numbers WHERE phone_number_id = :phone_number_id) AS access_token FROM e
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
  RETURNING id
)
INSERT INTO message_events (message_id, status, at, detail) SELECT id, :status, :at, CAST(:error AS jsonb) FROM u
RETURNING message_id
"""
)


# Built once (SQLAlchemy then only keys its cache per call): replays run it per request.
# `age` by the database's clock, the same for every replica.
BY_IDEMPOTENCY_KEY = select(
    Message.id,
    Message.request_hash,
    Message.status,
    Message.response_status,
    Message.response,
    Message.graph_message_id,
    Message.recipient_input,
    Message.recipient_wa_id,
    Message.window,
    cast(extract("epoch", func.clock_timestamp() - Message.created_at), Float).label("age"),
).where(Message.api_key_id == bindparam("api_key_id"), Message.idempotency_key == bindparam("key"))


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
    age: float  # seconds since it was recorded


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


ACCESS_TOKEN = select(PhoneNumber.access_token).where(PhoneNumber.phone_number_id == bindparam("id"))


async def access_token(conn: AsyncConnection, phone_number_id: str) -> str | None:
    """The number's own token; None: WINDOW_GATE_GRAPH_ACCESS_TOKEN."""
    token: str | None = (await conn.execute(ACCESS_TOKEN, {"id": phone_number_id})).scalar()
    return token


@dataclass(frozen=True, slots=True)
class Pending:
    access_token: str | None  # the number's own, if it has one


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


async def finish(
    conn: AsyncConnection | Rows,
    id: UUID,
    *,
    status: MessageStatus,
    at: datetime,
    graph_message_id: str | None = None,
    wa_id: str | None = None,
    error: object = None,
    response_status: int,
    response: object,
) -> bool:
    """Meta's synchronous answer (or its absence): the final word of this request. False when it was
    already written."""
    return (
        await FINISH.run(
            conn,
            {
                "id": id,
                "status": status,
                "graph_message_id": graph_message_id,
                "wa_id": wa_id,
                "error": _json(error),
                "response_status": response_status,
                "response": _json(response),
                "at": at,
            },
        )
        is not None
    )


async def by_idempotency_key(conn: AsyncConnection, api_key_id: str, key: str) -> Previous | None:
    row = (await conn.execute(BY_IDEMPOTENCY_KEY, {"api_key_id": api_key_id, "key": key})).first()
    return Previous(**row._asdict()) if row else None


async def get(conn: AsyncConnection, id: UUID) -> tuple[Row[Any], list[Row[Any]]] | None:
    row = (await conn.execute(select(Message.__table__).where(Message.id == id))).first()
    if row is None:
        return None
    events = select(MessageEvent.status, MessageEvent.at, MessageEvent.detail).where(
        MessageEvent.message_id == id
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
        )
        .values(status="unknown", updated_at=func.now())
        .returning(Message.id)
    )
    return len((await conn.execute(expired)).all())
