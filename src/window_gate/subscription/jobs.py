"""The subscription feature's background work."""

from window_gate import jobs
from window_gate.subscription import repository, service

registry = jobs.Registry()


@registry.every("relay.dispatch", "* * * * * *")
async def dispatch(ctx: jobs.Context) -> None:
    """Every second, once across every replica and worker: send what is due (service.py says how)."""
    await service.dispatch(ctx.engine, ctx.settings)


@registry.every("relay.purge", "23 * * * *")
async def purge(ctx: jobs.Context) -> None:
    """Deliveries sent or dead past WEBHOOK_RETENTION_DAYS, hourly."""
    async with ctx.engine.begin() as conn:
        await repository.purge(conn, ctx.settings.webhook_retention_days)


@registry.every("window.alarms", "* * * * * *")
async def alarms(ctx: jobs.Context) -> None:
    """Every second, once across every replica and worker: window.expiring and window.closed come due."""
    await service.ring_alarms(ctx.engine, ctx.settings)
