"""Every SQL statement about API keys."""

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.apikey.rules import Caller
from window_gate.db import HotPool

INSERT = text(
    "INSERT INTO api_keys (name, key_hash, key_prefix, role, phone_number_ids) "
    "VALUES (:name, :key_hash, :key_prefix, :role, CAST(:phone_number_ids AS text[])) RETURNING id"
)
BY_HASH = "SELECT id, name, role, phone_number_ids FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"
COUNT = text("SELECT count(*) FROM api_keys")


async def insert(
    conn: AsyncConnection,
    name: str,
    key_hash: str,
    key_prefix: str,
    role: str,
    phone_number_ids: Sequence[str],
) -> None:
    await conn.execute(
        INSERT,
        {
            "name": name,
            "key_hash": key_hash,
            "key_prefix": key_prefix,
            "role": role,
            "phone_number_ids": list(phone_number_ids),
        },
    )


async def by_hash(hot: HotPool, key_hash: str) -> Caller | None:
    """On the hot path: `hot` is the asyncpg pool."""
    row = await hot.fetchrow(BY_HASH, key_hash)
    if row is None:
        return None
    return Caller(str(row["id"]), row["name"], row["role"], frozenset(row["phone_number_ids"]))


async def count(conn: AsyncConnection) -> int:
    return int((await conn.execute(COUNT)).scalar_one())
