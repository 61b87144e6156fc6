"""Every SQL statement about API keys."""

from collections.abc import Sequence
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy import insert as insert_into
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.apikey.rules import Caller
from window_gate.db import AnyRow, HotPool, Statement
from window_gate.models import ApiKey, PhoneNumber

# On every /v1 request the Authenticator does not remember, so on the hot pool. It also stamps the key's
# last use, at most once a minute (the CTE's snapshot: the SELECT sees the row as before the stamp).
BY_HASH = Statement(
    """
WITH used AS (
  UPDATE api_keys SET last_used_at = now()
  WHERE key_hash = :key_hash AND revoked_at IS NULL
    AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
  RETURNING id
)
SELECT id, name, role, phone_number_ids FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL
"""
)


SHOWN = (
    ApiKey.id,
    ApiKey.name,
    ApiKey.key_prefix,
    ApiKey.role,
    ApiKey.phone_number_ids,
    ApiKey.created_at,
    ApiKey.last_used_at,
)


async def insert(
    conn: AsyncConnection,
    name: str,
    key_hash: str,
    key_prefix: str,
    role: str,
    phone_number_ids: Sequence[str],
) -> AnyRow:
    statement = insert_into(ApiKey).values(
        name=name,
        key_hash=key_hash,
        key_prefix=key_prefix,
        role=role,
        phone_number_ids=list(phone_number_ids),
    )
    return (await conn.execute(statement.returning(*SHOWN))).one()


async def listing(conn: AsyncConnection) -> Sequence[AnyRow]:
    """The keys not revoked, oldest first."""
    query = select(*SHOWN).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.created_at, ApiKey.id)
    return (await conn.execute(query)).all()


async def get(conn: AsyncConnection, api_key_id: UUID) -> AnyRow | None:
    query = select(*SHOWN).where(ApiKey.id == api_key_id, ApiKey.revoked_at.is_(None))
    return (await conn.execute(query)).one_or_none()


async def revoke(conn: AsyncConnection, api_key_id: UUID) -> bool:
    """Kept (messages and budgets name it), refused from now on: the Authenticators forget it within
    API_KEY_CACHE_SECONDS."""
    done = await conn.execute(
        update(ApiKey)
        .where(ApiKey.id == api_key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(ApiKey.id)
    )
    return done.first() is not None


async def by_hash(hot: HotPool, key_hash: str) -> Caller | None:
    """On the hot path: `hot` is the asyncpg pool."""
    row = await BY_HASH.run(hot, {"key_hash": key_hash})
    if row is None:
        return None
    return Caller(str(row["id"]), row["name"], row["role"], frozenset(row["phone_number_ids"]))


async def registered(conn: AsyncConnection) -> frozenset[str]:
    """The numbers an admin registered (ALLOW_LISTED_NUMBERS_ONLY: the only ones served)."""
    query = select(PhoneNumber.phone_number_id).where(PhoneNumber.registered_at.is_not(None))
    return frozenset((await conn.execute(query)).scalars())


async def count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(ApiKey))).scalar_one())
