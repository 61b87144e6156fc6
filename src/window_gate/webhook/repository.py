"""Every SQL statement about raw webhook deliveries."""

from datetime import timedelta

from sqlalchemy import delete, func, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.models import InboundMessage, WebhookDelivery


async def store(conn: AsyncConnection, body: bytes, error: str | None = None) -> None:
    await conn.execute(insert(WebhookDelivery).values(body=body, error=error))


async def mark_unapplied(conn: AsyncConnection, delivery_id: int, error: str) -> None:
    await conn.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(error=error))


async def purge(conn: AsyncConnection, days: int) -> None:
    """Forget deliveries past retention. Inbound ids go too: Meta redelivers for 7 days at most."""
    cutoff = func.now() - timedelta(days=days)
    await conn.execute(delete(WebhookDelivery).where(WebhookDelivery.received_at < cutoff))
    await conn.execute(delete(InboundMessage).where(InboundMessage.received_at < cutoff))
