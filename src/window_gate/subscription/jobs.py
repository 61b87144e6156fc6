"""The subscription feature's background work."""

from datetime import timedelta
from uuid import UUID

from window_gate import jobs, partitions
from window_gate.subscription import repository, service

registry = jobs.Registry()


@registry.every("relay.dispatch", "* * * * * *")
async def dispatch(ctx: jobs.Context) -> None:
    """Every second, once across every replica and worker: Meta's deliveries fanned out to their
    subscribers, then a drain for each subscription with something due, unless one is queued or running
    already (service.py says how)."""
    await service.fan_out(ctx.engine, ctx.settings)
    async with ctx.engine.begin() as conn:
        for subscription_id in await repository.due_subscriptions(conn):
            payload = {"subscription_id": str(subscription_id)}
            await jobs.enqueue(conn, DRAIN, payload, key=f"{DRAIN}:{subscription_id}")


DRAIN = "relay.drain"


@registry.task(DRAIN)
async def drain(ctx: jobs.Context, payload: jobs.Payload) -> None:
    await service.drain(ctx.engine, ctx.settings, UUID(payload["subscription_id"]))


@registry.every("relay.purge", "23 * * * *")
async def purge(ctx: jobs.Context) -> None:
    """Hourly: deliveries sent or dead past WEBHOOK_RETENTION_DAYS; attempts by the month, as webhook.purge
    does raw deliveries."""
    async with ctx.engine.begin() as conn:
        await partitions.roll(conn, "relay_attempts", timedelta(days=ctx.settings.webhook_retention_days))
    async with ctx.engine.begin() as conn:
        await repository.purge(conn, ctx.settings.webhook_retention_days)


@registry.every("window.alarms", "* * * * * *")
async def alarms(ctx: jobs.Context) -> None:
    """Every second, once across every replica and worker: window.expiring and window.closed come due."""
    await service.ring_alarms(ctx.engine, ctx.settings)
