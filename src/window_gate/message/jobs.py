"""The message feature's background work."""

from datetime import timedelta

from window_gate import jobs, partitions
from window_gate.kit import Gate
from window_gate.message import held, repository
from window_gate.message.service import IN_FLIGHT_SLACK_SECONDS

registry = jobs.Registry()


@registry.every("message.expire_pending", "* * * * * */10")
async def expire_pending(ctx: jobs.Context) -> None:
    """Sends left `pending` by a process that died before Meta answered become `unknown`, once surely
    past the upstream timeout (never re-sent: Meta may have sent them)."""
    async with ctx.engine.begin() as conn:
        await repository.expire_pending(conn, ctx.settings.graph_timeout_seconds * 3 + 5)


@registry.every("message.roll", "41 * * * *")
async def roll(ctx: jobs.Context) -> None:
    """Hourly: the monthly partitions of sends and of their events rolled (the months ahead made; with
    MESSAGE_RETENTION_DAYS, those wholly past it dropped, then the Idempotency-Keys of the sends dropped)."""
    days = ctx.settings.message_retention_days
    keep = None if days is None else timedelta(days=days)
    dropped = []
    for table in ("messages", "message_events"):
        async with ctx.engine.begin() as conn:
            dropped += (await partitions.roll(conn, table, keep)).dropped
    if dropped:
        async with ctx.engine.begin() as conn:
            await repository.forget_keys(conn)


@registry.task(held.RELEASE, retries=20, max_backoff=timedelta(minutes=5))
async def release(ctx: jobs.Context, payload: jobs.Payload) -> None:
    """A share of the replied waits' held messages, in order (message/held.py)."""
    await held.release(ctx.part(Gate), int(payload["shard"]))


@registry.every("conversation.watch", "* * * * * *")
async def watch(ctx: jobs.Context) -> None:
    """Every second, once across every replica and worker: held messages expire, waits end or are
    released (message/held.py)."""
    async with ctx.engine.begin() as conn:
        await held.watch(conn, ctx.settings.graph_timeout_seconds * 3 + IN_FLIGHT_SLACK_SECONDS)
