"""Customer identities: the customer behind some ids, found, created or merged.

The dependency points one way, window → customer: window reads identities (customer.identity) and keeps
its facts per customer id, so this package never imports window. What other features keep per customer
(the windows) moves with a merge through the `also_move` callable the caller passes: every caller is a
feature that may import window (webhook, message, consent), and none can forget it, the argument has no
default.
"""

from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.customer import repository

Move = Callable[[AsyncConnection, int, int], Awaitable[None]]  # (conn, merged id, kept id)


async def link(
    conn: AsyncConnection,
    wa_id: str | None,
    user_id: str | None,
    source: str,
    aliases: Sequence[str] = (),
    *,
    also_move: Move,
) -> int:
    """Find or create the customer known by these ids (and other spellings of them), merging customers
    that turn out to be one.

    The slow path of ingest: runs only for an identity not seen before (or newly linked), under
    transaction-scoped advisory locks so that concurrent deliveries and replicas agree.
    """
    ids = list(dict.fromkeys(i for i in (wa_id, user_id, *aliases) if i))
    await repository.lock(conn, ids)
    found = await repository.resolve(conn, ids)
    owners = sorted({found[i] for i in ids if i in found})
    if not owners:
        customer_id = await repository.create(conn, wa_id, user_id)
    else:
        customer_id = owners[0]
        for other in owners[1:]:
            await also_move(conn, other, customer_id)
            await repository.merge(conn, other, customer_id)
        await repository.fill_ids(conn, customer_id, wa_id, user_id)
    for alias in ids:
        if found.get(alias) != customer_id:
            await repository.add_alias(conn, alias, customer_id, source)
    return customer_id
