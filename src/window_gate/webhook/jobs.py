"""The webhook feature's background work."""

from window_gate import jobs
from window_gate.webhook import repository

registry = jobs.Registry()


@registry.every("webhook.purge", "0 * * * *")
async def purge(ctx: jobs.Context) -> None:
    """Raw deliveries past WEBHOOK_RETENTION_DAYS, hourly (minutes on a large archive: the jobs' engine
    bounds statements at 10 minutes, not the requests' seconds)."""
    async with ctx.engine.begin() as conn:
        await repository.purge(conn, ctx.settings.webhook_retention_days)
