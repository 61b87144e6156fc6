"""Every SQL statement about customer identities. (The merge's rules: customer/service.py.)"""

from collections.abc import Sequence

from sqlalchemy import Text, any_, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.models import Customer, CustomerAlias, InboundMessage

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
# Bound names differ from column names: SQLAlchemy reserves those inside UPDATE.
MERGE = (
    *(
        update(table).where(table.customer_id == bindparam("src")).values(customer_id=bindparam("dst"))
        for table in (CustomerAlias, InboundMessage)
    ),
    delete(Customer).where(Customer.id == bindparam("src")).returning(Customer.wa_id, Customer.user_id),
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
    await conn.execute(FILL_IDS, {"customer_id": customer_id, "wa_id": wa_id, "user_id": user_id})


async def merge(conn: AsyncConnection, src: int, dst: int) -> None:
    """Customer `src` becomes `dst`: its aliases and inbound messages move, its ids fill dst's gaps."""
    for statement in MERGE[:2]:
        await conn.execute(statement, {"src": src, "dst": dst})
    gone = (await conn.execute(MERGE[2], {"src": src})).one()
    await fill_ids(conn, dst, gone.wa_id, gone.user_id)
