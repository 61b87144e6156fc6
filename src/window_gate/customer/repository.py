"""Every SQL statement about customer identities."""

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

RESOLVE = text("SELECT alias, customer_id FROM customer_aliases WHERE alias = ANY(CAST(:aliases AS text[]))")
LOCK = text(
    "SELECT pg_advisory_xact_lock(hashtext(a)) FROM "
    "(SELECT a FROM unnest(CAST(:aliases AS text[])) a ORDER BY a) s"
)
CREATE = text("INSERT INTO customers (wa_id, user_id) VALUES (:wa_id, :user_id) RETURNING id")
ADD_ALIAS = text(
    "INSERT INTO customer_aliases (alias, customer_id, source) VALUES (:alias, :customer_id, :source) "
    "ON CONFLICT (alias) DO NOTHING"
)
FILL_IDS = text(
    "UPDATE customers SET wa_id = COALESCE(wa_id, :wa_id), user_id = COALESCE(user_id, :user_id) WHERE id = :id"
)
MERGE = (
    text("UPDATE customer_aliases SET customer_id = :dst WHERE customer_id = :src"),
    text("UPDATE inbound_messages SET customer_id = :dst WHERE customer_id = :src"),
    text("DELETE FROM customers WHERE id = :src RETURNING wa_id, user_id"),
)


async def resolve(conn: AsyncConnection, aliases: Sequence[str]) -> dict[str, int]:
    """Map each known alias to its customer id (one round trip)."""
    rows = await conn.execute(RESOLVE, {"aliases": list(aliases)})
    return {alias: cid for alias, cid in rows}


async def lock(conn: AsyncConnection, aliases: Sequence[str]) -> None:
    """Transaction-scoped advisory locks on these aliases, taken in one order (no deadlock)."""
    await conn.execute(LOCK, {"aliases": list(aliases)})


async def create(conn: AsyncConnection, wa_id: str | None, user_id: str | None) -> int:
    customer_id: int = (await conn.execute(CREATE, {"wa_id": wa_id, "user_id": user_id})).scalar_one()
    return customer_id


async def add_alias(conn: AsyncConnection, alias: str, customer_id: int, source: str) -> None:
    await conn.execute(ADD_ALIAS, {"alias": alias, "customer_id": customer_id, "source": source})


async def fill_ids(conn: AsyncConnection, customer_id: int, wa_id: str | None, user_id: str | None) -> None:
    """Ids the customer lacked; those it has stay."""
    await conn.execute(FILL_IDS, {"id": customer_id, "wa_id": wa_id, "user_id": user_id})


async def merge(conn: AsyncConnection, src: int, dst: int) -> None:
    """Customer `src` becomes `dst`: its aliases and inbound messages move, its ids fill dst's gaps."""
    for statement in MERGE[:2]:
        await conn.execute(statement, {"src": src, "dst": dst})
    gone = (await conn.execute(MERGE[2], {"src": src})).one()
    await fill_ids(conn, dst, gone.wa_id, gone.user_id)
