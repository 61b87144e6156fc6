"""Every SQL statement about API keys."""

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy import insert as insert_into
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.apikey.rules import Caller
from window_gate.db import HotPool, Statement
from window_gate.models import ApiKey

# On every /v1 request, so on the hot pool.
BY_HASH = Statement(
    "SELECT id, name, role, phone_number_ids FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL"
)


async def insert(
    conn: AsyncConnection,
    name: str,
    key_hash: str,
    key_prefix: str,
    role: str,
    phone_number_ids: Sequence[str],
) -> None:
    await conn.execute(
        insert_into(ApiKey).values(
            name=name,
            key_hash=key_hash,
            key_prefix=key_prefix,
            role=role,
            phone_number_ids=list(phone_number_ids),
        )
    )


async def by_hash(hot: HotPool, key_hash: str) -> Caller | None:
    """On the hot path: `hot` is the asyncpg pool."""
    row = await BY_HASH.run(hot, {"key_hash": key_hash})
    if row is None:
        return None
    return Caller(str(row["id"]), row["name"], row["role"], frozenset(row["phone_number_ids"]))


async def count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(ApiKey))).scalar_one())
