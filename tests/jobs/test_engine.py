"""The engine in this process, as `serve` runs it: retries then dead, due times, schedules once per tick
across replicas, shutdown, and the chores it took over from app.py's loop."""

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pgqueuer.models import Schedule as Tick
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import empty
from tests.jobs import until
from window_gate import db, jobs, partitions
from window_gate.app import create_app
from window_gate.config import Settings
from window_gate.jobs import engine as job_engine
from window_gate.jobs.registry import Schedule
from window_gate.kit import Gate
from window_gate.webhook.jobs import purge


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.make_engine(database_url, 2, 5)
    yield engine
    await engine.dispose()


async def states(engine: AsyncEngine) -> dict[tuple[str, str], int]:
    async with engine.connect() as conn:
        return {(e, s): n for e, s, n in await jobs.backlog(conn)}


async def test_a_failing_job_is_retried_with_backoff_then_dead(
    settings: Settings, database_url: str, engine: AsyncEngine
) -> None:
    registry, runs = jobs.Registry(), []

    @registry.task("test.fails", retries=2, backoff=timedelta(seconds=0.3))
    async def fails(ctx: jobs.Context, payload: jobs.Payload) -> None:
        runs.append((ctx.attempt, time.monotonic()))
        raise RuntimeError("the subscriber answered 500")

    async with jobs.running(settings, database_url, registry, 4):
        async with engine.begin() as conn:
            await jobs.enqueue(conn, "test.fails", {"delivery": 1})

        async def dead() -> bool:
            return (await states(engine)).get(("test.fails", "failed")) == 1

        await until(dead, 15)
    assert [attempt for attempt, _ in runs] == [0, 1, 2]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(runs)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps  # 0.3 s, then doubled
    assert await states(engine) == {("test.fails", "failed"): 1}  # kept, not deleted: seen in /metrics


async def test_a_job_due_later_runs_at_its_time(
    settings: Settings, database_url: str, engine: AsyncEngine
) -> None:
    registry, ran = jobs.Registry(), asyncio.Event()

    @registry.task("test.due")
    async def due(ctx: jobs.Context, payload: jobs.Payload) -> None:
        ran.set()

    async with jobs.running(settings, database_url, registry, 4):
        await asyncio.sleep(0.5)  # the engine is idle, asleep on its poll
        enqueued = time.monotonic()  # due 2 s after the transaction's now(), which is later than this
        async with engine.begin() as conn:
            await jobs.enqueue(conn, "test.due", after=timedelta(seconds=2))
        assert await states(engine) == {("test.due", "scheduled"): 1}
        await asyncio.wait_for(ran.wait(), 10)
        late = time.monotonic() - enqueued - 2
    assert 0 <= late < 1.0, late  # window.expiring needs it within 5 s


async def test_a_schedule_runs_once_per_tick_across_replicas(settings: Settings, database_url: str) -> None:
    registry, ticks = jobs.Registry(), []

    @registry.every("test.tick", "* * * * * *")  # every second
    async def tick(ctx: jobs.Context) -> None:
        ticks.append(datetime.now(UTC))

    async with (
        jobs.running(settings, database_url, registry, 2),
        jobs.running(settings, database_url, registry, 2),
        jobs.running(settings, database_url, registry, 2),
    ):
        await asyncio.sleep(4.2)
    seconds = [t.replace(microsecond=0) for t in ticks]
    # pgqueuer's scheduler sleeps until the next tick plus a second's leeway: a run every other second or
    # so, never twice in one second (three replicas each running it would be three a second).
    assert 1 <= len(ticks) <= 5, ticks
    assert len(set(seconds)) == len(seconds), ticks


@pytest.mark.parametrize(("last_run", "runs"), [(None, 1), ("15:17:59.9", 1), ("15:18:00.012", 0)])
async def test_a_tick_picked_again_past_its_boundary_runs_once(
    settings: Settings, engine: AsyncEngine, last_run: str | None, runs: int
) -> None:
    # pgqueuer, picking the every-second schedule at 15:18:00.0095 with a delay its process computed just
    # before 15:18:00, leaves it due again at once: a second replica picks it at 15:18:00.5 (seen in CI).
    ran: list[jobs.Context] = []

    async def tick_(ctx: jobs.Context) -> None:
        ran.append(ctx)

    schedule = Schedule("test.tick", "* * * * * *", tick_)
    day = "2026-12-02T"
    tick = Tick(
        id=1, expression="* * * * * *", entrypoint="test.tick", status="picked",
        heartbeat=f"{day}15:18:00.5Z", created=f"{day}15:00:00Z", updated=f"{day}15:18:00.5Z",
        next_run=f"{day}15:18:01Z", last_run=last_run and f"{day}{last_run}Z",
    )  # fmt: skip
    await job_engine._tick(schedule, jobs.Context(settings, engine), tick)
    assert len(ran) == runs


async def test_a_job_cut_off_by_shutdown_is_queued_again(
    settings: Settings, database_url: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_engine, "SHUTDOWN_GRACE_SECONDS", 0.5)
    registry, started, finished = jobs.Registry(), asyncio.Event(), []

    @registry.task("test.long")
    async def long(ctx: jobs.Context, payload: jobs.Payload) -> None:
        started.set()
        if ctx.attempt == 0:
            await asyncio.sleep(60)  # longer than the grace
        finished.append(ctx.attempt)

    async with jobs.running(settings, database_url, registry, 2):
        async with engine.begin() as conn:
            await jobs.enqueue(conn, "test.long")
        await asyncio.wait_for(started.wait(), 10)
    assert await states(engine) == {("test.long", "queued"): 1}
    async with jobs.running(settings, database_url, registry, 2):

        async def done() -> bool:
            return finished == [1]

        await until(done, 10)
    assert await states(engine) == {}


async def test_a_stale_pending_send_becomes_unknown_through_the_schedule(
    settings: Settings, upstream: httpx.AsyncBaseTransport
) -> None:
    """The app's lifespan runs the engine: a send left `pending` past 3 × graph timeout + 5 s (35 s here)
    by a dead process reads `unknown` within the schedule's 10 s; a younger one stays pending."""
    app = create_app(settings.model_copy(update={"graph_timeout_seconds": 10}), upstream)
    async with LifespanManager(app):
        await expire_through_the_app(app.state.gate)
    await empty(database_url_of(settings), "messages", "api_keys")


def database_url_of(settings: Settings) -> str:
    assert settings.database_url
    return settings.database_url


async def expire_through_the_app(state: Gate) -> None:
    message_id = uuid.uuid4()
    async with state.engine.begin() as conn:
        key = (
            await conn.execute(
                text(
                    "INSERT INTO api_keys (name, key_hash, key_prefix, role) VALUES ('k', 'h', 'wg_', 'send') RETURNING id"
                )
            )
        ).scalar_one()
        fresh = uuid.uuid4()
        for id_, age in ((message_id, timedelta(seconds=36)), (fresh, timedelta(0))):
            await conn.execute(
                text(
                    "INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, type, "
                    "body, \"window\", status, created_at, updated_at) VALUES (:id, :key, 'x', '123', "
                    "'+15551234567', 'text', '{}', '{}', 'pending', now() - CAST(:age AS interval), "
                    "now() - CAST(:age AS interval))"
                ),
                {"id": id_, "key": key, "age": age},
            )

    async def status(id_: uuid.UUID) -> str:
        async with state.engine.connect() as conn:
            found: str = (
                await conn.execute(text("SELECT status FROM messages WHERE id = :id"), {"id": id_})
            ).scalar_one()
            return found

    async def expired() -> bool:
        return await status(message_id) == "unknown"

    await until(expired, 12, every=0.2)
    assert await status(fresh) == "pending"  # not yet surely past Meta's answer


async def test_the_purge_rolls_the_partitions_of_raw_deliveries(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Whole months go (tests/test_partitions.py): a row 31 days old shares a partition younger than
    retention and stays; one whose month had no partition (DEFAULT caught it) is moved into a new one."""
    far = partitions.month_start(datetime.now(UTC), 9)
    async with engine.begin() as conn:
        for at in ("now() - interval '31 days'", "now() - interval '1 hour'", ":far"):
            await conn.execute(
                text(f"INSERT INTO webhook_deliveries (body, received_at) VALUES ('{{}}', {at})"),
                {"far": far},
            )
    await purge(jobs.Context(settings, engine))  # the `webhook.purge` schedule's handler, hourly
    async with engine.connect() as conn:
        where = list(
            (
                await conn.execute(
                    text("SELECT tableoid::regclass::text FROM webhook_deliveries ORDER BY received_at")
                )
            ).scalars()
        )
        await conn.execute(text("DELETE FROM webhook_deliveries"))
        await conn.commit()
    assert len(where) == 3 and where[-1] == partitions.partition_name("webhook_deliveries", far)
