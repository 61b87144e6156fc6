"""Every SQL statement about raw webhook deliveries."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

INSERT = text("INSERT INTO webhook_deliveries (body, error) VALUES (:body, :error)")
MARK = text("UPDATE webhook_deliveries SET error = :error WHERE id = :id")
PURGE = (
    text("DELETE FROM webhook_deliveries WHERE received_at < now() - make_interval(days => :days)"),
    text("DELETE FROM inbound_messages WHERE received_at < now() - make_interval(days => :days)"),
)


async def store(conn: AsyncConnection, body: bytes, error: str | None = None) -> None:
    await conn.execute(INSERT, {"body": body, "error": error})


async def mark_unapplied(conn: AsyncConnection, delivery_id: int, error: str) -> None:
    await conn.execute(MARK, {"id": delivery_id, "error": error})


async def purge(conn: AsyncConnection, days: int) -> None:
    """Forget deliveries past retention. Inbound ids go too: Meta redelivers for 7 days at most."""
    for statement in PURGE:
        await conn.execute(statement, {"days": days})
