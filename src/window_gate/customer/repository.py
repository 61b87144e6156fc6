"""Every SQL statement about customer identities."""

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.window.repository import move_windows

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


async def link(
    conn: AsyncConnection, wa_id: str | None, user_id: str | None, source: str, aliases: Sequence[str] = ()
) -> int:
    """Find or create the customer known by these ids (and other spellings of them), merging customers
    that turn out to be one.

    The slow path of ingest: runs only for an identity not seen before (or newly linked), under
    transaction-scoped advisory locks so that concurrent deliveries and replicas agree.
    """
    ids = list(dict.fromkeys(i for i in (wa_id, user_id, *aliases) if i))
    await conn.execute(LOCK, {"aliases": ids})
    found = await resolve(conn, ids)
    owners = sorted({found[i] for i in ids if i in found})
    if not owners:
        customer_id: int = (await conn.execute(CREATE, {"wa_id": wa_id, "user_id": user_id})).scalar_one()
    else:
        customer_id = owners[0]
        for other in owners[1:]:
            await _merge(conn, other, customer_id)
        await conn.execute(FILL_IDS, {"id": customer_id, "wa_id": wa_id, "user_id": user_id})
    for alias in ids:
        if found.get(alias) != customer_id:
            await conn.execute(ADD_ALIAS, {"alias": alias, "customer_id": customer_id, "source": source})
    return customer_id


async def _merge(conn: AsyncConnection, src: int, dst: int) -> None:
    await move_windows(conn, src, dst)
    for statement in MERGE[:2]:
        await conn.execute(statement, {"src": src, "dst": dst})
    gone = (await conn.execute(MERGE[2], {"src": src})).one()
    await conn.execute(FILL_IDS, {"id": dst, "wa_id": gone.wa_id, "user_id": gone.user_id})
