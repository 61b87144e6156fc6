"""The engine inside `serve`: its backlog in /metrics, and WINDOW_GATE_JOBS_IN_SERVE=false."""

import asyncio
from datetime import timedelta

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.jobs import until
from window_gate import jobs
from window_gate.app import create_app
from window_gate.config import Settings
from window_gate.kit import Gate


def backlog_lines(metrics: str) -> set[str]:
    return {line for line in metrics.splitlines() if line.startswith('window_gate_jobs{entrypoint="test.')}


async def test_metrics_show_the_backlog_by_entrypoint_and_state(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:  # no process handles test.*: they stay where they are
        for _ in range(2):
            await jobs.enqueue(conn, "test.relay")
        await jobs.enqueue(conn, "test.relay", after=timedelta(hours=1))
        dead = await jobs.enqueue(conn, "test.campaign")
        await conn.execute(text("UPDATE pgqueuer SET status = 'failed' WHERE id = :id"), {"id": dead})
    assert backlog_lines((await client.get("/metrics")).text) == {
        'window_gate_jobs{entrypoint="test.relay",state="queued"} 2.0',
        'window_gate_jobs{entrypoint="test.relay",state="scheduled"} 1.0',
        'window_gate_jobs{entrypoint="test.campaign",state="failed"} 1.0',
    }
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM pgqueuer"))
    assert backlog_lines((await client.get("/metrics")).text) == {  # gone: 0, not the last figure
        'window_gate_jobs{entrypoint="test.relay",state="queued"} 0.0',
        'window_gate_jobs{entrypoint="test.relay",state="scheduled"} 0.0',
        'window_gate_jobs{entrypoint="test.campaign",state="failed"} 0.0',
    }


async def engine_connections(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found: int = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'window_gate jobs'"
                )
            )
        ).scalar_one()
        return found


async def test_every_serve_process_runs_the_engine(app_state: tuple[httpx.AsyncClient, Gate]) -> None:
    engine = app_state[1].engine

    async def listening() -> bool:
        return await engine_connections(engine) > 0

    await until(listening, 10)


async def test_serve_leaves_the_jobs_to_workers_when_told(
    settings: Settings, upstream: httpx.AsyncBaseTransport
) -> None:
    app = create_app(settings.model_copy(update={"jobs_in_serve": False}), upstream)
    async with LifespanManager(app):
        gate: Gate = app.state.gate
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gate"
        ) as client:
            assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(1)  # the engine, were it started, connects at once (test above)
        assert await engine_connections(gate.engine) == 0
