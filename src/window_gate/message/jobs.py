"""The message feature's background work."""

from window_gate import jobs
from window_gate.message import repository

registry = jobs.Registry()


@registry.every("message.expire_pending", "* * * * * */10")
async def expire_pending(ctx: jobs.Context) -> None:
    """Sends left `pending` by a process that died before Meta answered become `unknown`, once surely
    past the upstream timeout (never re-sent: Meta may have sent them)."""
    async with ctx.engine.begin() as conn:
        await repository.expire_pending(conn, ctx.settings.graph_timeout_seconds * 3 + 5)
