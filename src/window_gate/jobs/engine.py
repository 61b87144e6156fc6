"""The engine: pgqueuer's queue manager and scheduler in this process, restarted if they fail."""

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta

import asyncpg
import orjson
from croniter import croniter
from pgqueuer import PgQueuer
from pgqueuer.executors import DatabaseRetryEntrypointExecutor, EntrypointExecutor
from pgqueuer.models import Job
from pgqueuer.models import Schedule as Tick
from sqlalchemy import column, delete, func, table

from window_gate import db
from window_gate.config import Settings
from window_gate.jobs.registry import Context, Registry, Retry, Schedule, Task

log = logging.getLogger(__name__)
# A claimed job whose claimant has not beaten its heartbeat for this long is claimed again: how soon the
# jobs of a SIGKILLed process come back (pgqueuer beats at half of it).
HEARTBEAT = timedelta(seconds=10)
# Longest a worker sleeps between looks at the queue; enqueues and due times wake it sooner.
POLL = timedelta(seconds=2)
SHUTDOWN_GRACE_SECONDS = 5.0  # running jobs get this long to finish; then they go back to the queue
STATEMENT_SECONDS = 600  # a job's statements are answering no one: a purge may take minutes
RESTART_SECONDS = (1, 2, 5, 10, 30)
LOG_RETENTION = timedelta(days=7)
LOG = table("pgqueuer_log", column("created"))


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    url: str,
    registry: Registry,
    concurrency: int,
    parts: Mapping[type, object] | None = None,
) -> AsyncIterator[None]:
    """Run `registry`'s tasks and schedules in this process while inside; `concurrency`: most jobs at
    once; `parts`: what their Context shares (Context.part). Nothing connects before entry; everything
    opened is closed on exit, however it ends."""
    # A connection per job slot, and two for the schedules, which run beside the slots: a job that holds
    # its connection (a relay drain awaiting a subscriber) never keeps a due schedule waiting.
    engine = db.make_engine(url, max(concurrency, 1) + 2, STATEMENT_SECONDS)
    everything = Registry().include(registry, _housekeeping())
    stop = asyncio.Event()
    shared = Context(settings, engine, parts=dict(parts or {}))
    supervisor = asyncio.create_task(_supervise(shared, url, everything, concurrency, stop))
    try:
        yield
    finally:
        stop.set()
        try:
            await supervisor
        finally:
            await engine.dispose()


async def _supervise(
    shared: Context, url: str, registry: Registry, concurrency: int, stop: asyncio.Event
) -> None:
    failures = 0
    while not stop.is_set():
        pool = None
        try:
            pool = await asyncpg.create_pool(
                url.replace("postgresql+asyncpg://", "postgresql://", 1),
                min_size=1,
                max_size=3,  # pgqueuer keeps one for LISTEN; dequeues, heartbeats and logs share the rest
                command_timeout=30,
                server_settings={"application_name": "window_gate jobs"},
            )
            pgq = _queuer(pool, shared, registry)
            await _run(pgq, concurrency, stop)
            return
        except Exception:
            pause = RESTART_SECONDS[min(failures, len(RESTART_SECONDS) - 1)]
            failures += 1
            log.exception("the jobs engine stopped; starting again in %s s", pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        finally:
            if pool is not None:
                await pool.close()


async def _run(pgq: PgQueuer, concurrency: int, stop: asyncio.Event) -> None:
    """Until `stop`: then no new claims, and the running jobs' grace; raises if pgqueuer fails."""
    batch = max(concurrency // 2, 1)  # pgqueuer wants room for two batches in flight
    work = asyncio.create_task(
        pgq.run(
            dequeue_timeout=POLL,
            batch_size=batch,
            max_concurrent_tasks=max(concurrency, 2 * batch),
            heartbeat_timeout=HEARTBEAT,
            log_aggregation_interval=timedelta(0),  # we read the queue itself, not its statistics
        )
    )
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((work, stopping), return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            work.result()  # pgqueuer ended by itself: its error, for the supervisor
            raise RuntimeError("pgqueuer stopped without being asked")
        pgq.shutdown.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(work), SHUTDOWN_GRACE_SECONDS)
    finally:
        stopping.cancel()
        if not work.done():
            work.cancel()  # jobs still running are cancelled: _task turns that into a retry, now
            with contextlib.suppress(asyncio.CancelledError):
                await work


def _queuer(pool: asyncpg.Pool, shared: Context, registry: Registry) -> PgQueuer:
    pgq = PgQueuer.from_asyncpg_pool(pool)
    for task in registry.tasks.values():
        retried = functools.partial(
            DatabaseRetryEntrypointExecutor,
            max_attempts=task.retries,
            initial_delay=task.backoff,
            max_delay=task.max_backoff,
        )
        pgq.entrypoint(
            task.name,
            concurrency_limit=task.concurrency,
            accepts_context=False,
            on_failure="hold",  # dead jobs stay, status `failed`: seen in /metrics, re-queued by hand
            executor_factory=retried if task.retries else EntrypointExecutor,
        )(functools.partial(_task, task, shared))
    for schedule in registry.schedules.values():
        pgq.schedule(schedule.name, schedule.cron, accepts_context=False)(
            functools.partial(_tick, schedule, shared)
        )
    return pgq


async def _task(task: Task, shared: Context, job: Job) -> None:
    payload = orjson.loads(job.payload) if job.payload else {}
    try:
        await task.run(dataclasses.replace(shared, attempt=job.attempts), payload)
    except asyncio.CancelledError:
        # pgqueuer deletes a cancelled job; one cut off by our shutdown is not done: queued again at once.
        raise Retry(timedelta(0), "interrupted by shutdown") from None


async def _tick(schedule: Schedule, shared: Context, tick: Tick) -> None:
    # pgqueuer sets the next run from a delay its process computed a moment before the pick: picked just
    # past a tick's boundary, the row is due again at once and another replica would run the same tick.
    # The row's last_run (when the previous run ended) and updated (this pick), both the database's clock,
    # tell a tick already served: one a run ended after (a run longer than the interval skips the ticks it
    # overran, as it would have while the row stayed picked).
    due = croniter(tick.expression, start_time=tick.updated).get_prev(datetime)
    if tick.last_run is not None and tick.last_run >= due:
        return
    await schedule.run(shared)


def _housekeeping() -> Registry:
    """The engine's own chore: pgqueuer logs every enqueue, claim and end, and never forgets them."""
    registry = Registry()

    @registry.every("jobs.purge_log", "17 * * * *")
    async def purge_log(ctx: Context) -> None:
        async with ctx.engine.begin() as conn:
            await conn.execute(delete(LOG).where(LOG.c.created < func.now() - LOG_RETENTION))

    return registry
