"""The message feature's background work."""

from datetime import timedelta

from window_gate import jobs
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
