"""`window-gate worker` with two more tasks, for the tests that kill workers (python -m tests.jobs.worker):
the CLI verb itself, its registry extended before it reads it."""

import asyncio
import os
import sys

import asyncpg
from sqlalchemy import text

from window_gate import background, jobs
from window_gate.cli import main

RUNS = "CREATE TABLE IF NOT EXISTS test_job_runs (n int NOT NULL, pid int NOT NULL, at timestamptz DEFAULT now())"
tests = jobs.Registry()


@tests.task("test.record")
async def record(ctx: jobs.Context, payload: jobs.Payload) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO test_job_runs (n, pid) VALUES (:n, :pid)"),
            {"n": payload["n"], "pid": os.getpid()},
        )


@tests.task("test.block")
async def block(ctx: jobs.Context, payload: jobs.Payload) -> None:
    """Blocks its first claimant until killed; whoever claims it next completes it."""
    async with ctx.engine.begin() as conn:
        before = (
            await conn.execute(text("SELECT count(*) FROM test_job_runs WHERE n = :n"), {"n": payload["n"]})
        ).scalar_one()
        await conn.execute(
            text("INSERT INTO test_job_runs (n, pid) VALUES (:n, :pid)"),
            {"n": payload["n"], "pid": os.getpid()},
        )
    if not before:
        await asyncio.Event().wait()


def registry() -> jobs.Registry:
    return ORIGINAL().include(tests)


async def create_runs_table(url: str) -> None:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.execute(RUNS)
    finally:
        await conn.close()


ORIGINAL = background.registry
if __name__ == "__main__":
    background.registry = registry
    main(["worker", *sys.argv[1:]])
