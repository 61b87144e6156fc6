"""Background work: durable jobs on PostgreSQL (pgqueuer), shared by every replica.

Features declare what they run on a `Registry` of their own (jobs never imports a feature); the entry
points (app.py for `serve`, cli.py for `window-gate worker`) combine the registries and start the engine
with `running(...)`. A feature enqueues with `enqueue(conn, ...)` on the connection of the business write,
so the job exists exactly when that write commits.

    registry = jobs.Registry()

    @registry.task("relay.deliver", retries=35, max_backoff=timedelta(hours=1))
    async def deliver(ctx: jobs.Context, payload: jobs.Payload) -> None: ...

    @registry.every("message.expire_pending", "* * * * * */10")  # cron; a sixth field is seconds
    async def expire(ctx: jobs.Context) -> None: ...

    async with engine.begin() as conn:
        await store_something(conn)
        await jobs.enqueue(conn, "relay.deliver", {"delivery": 42})

What pgqueuer 1.6 gives, and how the next features map onto it:

- Exactly one claimant: a job is claimed with FOR UPDATE SKIP LOCKED and marked `picked`; the claimant
  beats a heartbeat every HEARTBEAT / 2. A process that dies (SIGKILL, power) stops beating: after
  HEARTBEAT its jobs are claimed again by whoever polls next (every POLL at most). A handler must
  therefore be idempotent: a job may run again after a crash mid-way (at least once).
- Retries: `retries=N` re-queues a failed job N times, `backoff` doubling up to `max_backoff`; then it
  stays in the table with status `failed` (dead), visible in /metrics, never deleted.
  Webhook relay (about 24 h, capped at 1 h): `retries=35`, i.e. 1, 2, 4 … 2048 s, then 23 hourly.
  pgqueuer's backoff has no jitter; a relay wanting it raises `jobs.Retry(delay)` itself.
- Due at a time: `enqueue(..., after=timedelta)`; workers sleep until the earliest due job, so it starts
  within a poll's fraction of a second (window.expiring: enqueue at the window's write, due at
  expires_at - lead).
- At most one queued-or-running job per key: `enqueue(..., key=...)` (pgqueuer's dedupe key); a second
  enqueue with the same key while one is queued or running is skipped and returns None.
- Per-key ordering (one customer's held messages, one subscriber's deliveries): pgqueuer orders by
  priority then id but runs jobs of one entrypoint concurrently, and has no per-key lane. The items live
  in the feature's own table, ordered; a job is only a wake-up for its key and, under
  `pg_advisory_xact_lock(key)`, takes the key's *oldest* pending item, not "its own". Then items leave in
  order, one at a time per key, whichever replica claims which job; keys run in parallel. Limit: a key's
  jobs queue behind its lock while holding a worker slot each (keep them short, or `concurrency` low).
- Pacing (a campaign's rate): pgqueuer 1.6 has per-entrypoint `concurrency` limits across all workers
  but no rate limit. A campaign is one `concurrency=1` task that sends one slice (rate × tick) and, in the
  transaction recording the slice, enqueues its next tick `after=tick`.
"""

from window_gate.jobs.engine import HEARTBEAT, POLL, running
from window_gate.jobs.queue import backlog, enqueue
from window_gate.jobs.registry import Context, Payload, Registry, Retry

__all__ = [
    "HEARTBEAT",
    "POLL",
    "Context",
    "Payload",
    "Registry",
    "Retry",
    "backlog",
    "enqueue",
    "running",
]
