"""The webhook feature's background work."""

from datetime import timedelta

from window_gate import jobs, partitions
from window_gate.webhook import repository

registry = jobs.Registry()


@registry.every("webhook.purge", "0 * * * *")
async def purge(ctx: jobs.Context) -> None:
    """Hourly: raw deliveries' partitions rolled (the months ahead made, those wholly past
    WEBHOOK_RETENTION_DAYS dropped: committed at once, it holds the table while it drops); then inbound ids
    and echoes past it (minutes on a large archive: the jobs' engine bounds statements at 10 minutes)."""
    async with ctx.engine.begin() as conn:
        await partitions.roll(conn, "webhook_deliveries", timedelta(days=ctx.settings.webhook_retention_days))
    async with ctx.engine.begin() as conn:
        await repository.purge(conn, ctx.settings.webhook_retention_days)
