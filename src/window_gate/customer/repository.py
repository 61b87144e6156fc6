"""Every SQL statement about customer identities."""

from collections.abc import Sequence

from sqlalchemy import Text, any_, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.models import Customer, CustomerAlias, InboundMessage
from window_gate.window.repository import move_windows

# Built once (SQLAlchemy then only keys its cache per call): this is webhook ingest's path for new customers.
_ALIASES = bindparam("aliases", type_=ARRAY(Text))
RESOLVE = select(CustomerAlias.alias, CustomerAlias.customer_id).where(CustomerAlias.alias == any_(_ALIASES))
_SPELLINGS = func.unnest(_ALIASES).table_valued("alias").render_derived(name="a")
_ORDERED = select(_SPELLINGS.c.alias).order_by(_SPELLINGS.c.alias).subquery()
# One lock per spelling, taken in one order by everyone (no deadlock).
LOCK = select(func.pg_advisory_xact_lock(func.hashtext(_ORDERED.c.alias)))
CREATE = insert(Customer).returning(Customer.id)
ADD_ALIAS = upsert(CustomerAlias).on_conflict_do_nothing(index_elements=[CustomerAlias.alias])
FILL_IDS = (
    update(Customer)
    .where(Customer.id == bindparam("customer_id"))
    .values(
        wa_id=func.coalesce(Customer.wa_id, bindparam("wa_id", type_=Text)),
        user_id=func.coalesce(Customer.user_id, bindparam("user_id", type_=Text)),
    )
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
        await conn.execute(FILL_IDS, {"customer_id": customer_id, "wa_id": wa_id, "user_id": user_id})
    for alias in ids:
        if found.get(alias) != customer_id:
            await conn.execute(ADD_ALIAS, {"alias": alias, "customer_id": customer_id, "source": source})
    return customer_id


async def _merge(conn: AsyncConnection, src: int, dst: int) -> None:
    await move_windows(conn, src, dst)
    for table in (CustomerAlias, InboundMessage):
        await conn.execute(update(table).where(table.customer_id == src).values(customer_id=dst))
    gone = (
        await conn.execute(
            delete(Customer).where(Customer.id == src).returning(Customer.wa_id, Customer.user_id)
        )
    ).one()
    await conn.execute(FILL_IDS, {"customer_id": dst, "wa_id": gone.wa_id, "user_id": gone.user_id})
