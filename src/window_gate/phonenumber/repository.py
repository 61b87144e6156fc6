"""Every SQL statement about phone numbers as admins set them up."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.db import AnyRow
from window_gate.models import PhoneNumber


async def upsert(conn: AsyncConnection, phone_number_id: str, values: dict[str, Any]) -> AnyRow:
    """Register the number (if it was only heard of, or unknown) and set these columns; others stay."""
    now = func.now()
    statement = insert(PhoneNumber).values(
        phone_number_id=phone_number_id, registered_at=now, updated_at=now, **values
    )
    statement = statement.on_conflict_do_update(
        index_elements=[PhoneNumber.phone_number_id],
        set_={
            **{column: statement.excluded[column] for column in values},
            "registered_at": func.coalesce(PhoneNumber.registered_at, now),
            "updated_at": now,
        },
    )
    return (await conn.execute(statement.returning(PhoneNumber))).one()


async def get(conn: AsyncConnection, phone_number_id: str) -> AnyRow | None:
    return (
        await conn.execute(select(PhoneNumber).where(PhoneNumber.phone_number_id == phone_number_id))
    ).one_or_none()


async def listing(conn: AsyncConnection) -> Sequence[AnyRow]:
    return (await conn.execute(select(PhoneNumber).order_by(PhoneNumber.phone_number_id))).all()


async def remove(conn: AsyncConnection, phone_number_id: str) -> bool:
    gone = await conn.execute(
        delete(PhoneNumber)
        .where(PhoneNumber.phone_number_id == phone_number_id)
        .returning(PhoneNumber.phone_number_id)
    )
    return gone.first() is not None


async def sealed_tokens(conn: AsyncConnection) -> Sequence[AnyRow]:
    """Every stored token (encrypted), locked until the transaction ends: a re-encryption rewrites them."""
    query = (
        select(PhoneNumber.phone_number_id, PhoneNumber.access_token_encrypted)
        .where(PhoneNumber.access_token_encrypted.is_not(None))
        .with_for_update()
    )
    return (await conn.execute(query)).all()


async def set_sealed(conn: AsyncConnection, phone_number_id: str, sealed: str) -> None:
    await conn.execute(
        update(PhoneNumber)
        .where(PhoneNumber.phone_number_id == phone_number_id)
        .values(access_token_encrypted=sealed)
    )
