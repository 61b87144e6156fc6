"""Every SQL statement about customer identities."""

from collections.abc import Sequence

from sqlalchemy import Text, Update, any_, delete, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.models import Customer, CustomerAlias, InboundMessage
from window_gate.window.repository import move_windows


def _fill_ids(customer_id: int, wa_id: str | None, user_id: str | None) -> Update:
    return (
        update(Customer)
        .where(Customer.id == customer_id)
        .values(wa_id=func.coalesce(Customer.wa_id, wa_id), user_id=func.coalesce(Customer.user_id, user_id))
    )


async def resolve(conn: AsyncConnection, aliases: Sequence[str]) -> dict[str, int]:
    """Map each known alias to its customer id (one round trip)."""
    query = select(CustomerAlias.alias, CustomerAlias.customer_id).where(
        CustomerAlias.alias == any_(literal(list(aliases), ARRAY(Text)))
    )
    rows = await conn.execute(query)
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
    # One lock per spelling, taken in one order by everyone (no deadlock).
    names = func.unnest(literal(ids, ARRAY(Text))).table_valued("name").render_derived(name="a")
    ordered = select(names.c.name).order_by(names.c.name).subquery()
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(ordered.c.name))))
    found = await resolve(conn, ids)
    owners = sorted({found[i] for i in ids if i in found})
    if not owners:
        create = insert(Customer).values(wa_id=wa_id, user_id=user_id).returning(Customer.id)
        customer_id: int = (await conn.execute(create)).scalar_one()
    else:
        customer_id = owners[0]
        for other in owners[1:]:
            await _merge(conn, other, customer_id)
        await conn.execute(_fill_ids(customer_id, wa_id, user_id))
    for alias in ids:
        if found.get(alias) != customer_id:
            add = upsert(CustomerAlias).values(alias=alias, customer_id=customer_id, source=source)
            await conn.execute(add.on_conflict_do_nothing(index_elements=[CustomerAlias.alias]))
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
    await conn.execute(_fill_ids(dst, gone.wa_id, gone.user_id))
