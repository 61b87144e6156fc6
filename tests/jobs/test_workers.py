"""`window-gate worker` processes over real PostgreSQL: each job done once among several workers, and a
job whose worker is SIGKILLed done by another."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import cli_env, empty
from tests.jobs import until
from tests.jobs.worker import create_runs_table
from window_gate import db, jobs
from window_gate.cli import main
from window_gate.jobs.engine import SHUTDOWN_GRACE_SECONDS


@pytest.fixture
async def runs(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    await create_runs_table(database_url)
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    yield conn
    await conn.execute("DROP TABLE test_job_runs")
    await conn.close()


@contextmanager
def worker(
    database_url: str, log: Path, *args: str, module: str = "tests.jobs.worker"
) -> Iterator["subprocess.Popen[bytes]"]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=cli_env(DATABASE_URL=database_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[2],
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def enqueue(database_url: str, entrypoint: str, count: int) -> None:
    engine = db.make_engine(database_url, 1, 5)
    try:
        async with engine.begin() as conn:
            for n in range(count):
                await jobs.enqueue(conn, entrypoint, {"n": n})
    finally:
        await engine.dispose()


async def test_each_job_is_done_once_by_two_workers(
    database_url: str, runs: asyncpg.Connection, tmp_path: Path
) -> None:
    with (
        worker(database_url, tmp_path / "a.log", "--concurrency", "4"),
        worker(database_url, tmp_path / "b.log", "--concurrency", "4"),
    ):
        await enqueue(database_url, "test.record", 300)

        async def all_done() -> bool:
            return bool(await runs.fetchval("SELECT count(*) FROM test_job_runs") >= 300)

        await until(all_done, 60)
        await asyncio.sleep(1)  # any second run would land now
        done = await runs.fetch(
            "SELECT n, count(*) AS times, count(DISTINCT pid) AS pids FROM test_job_runs GROUP BY n"
        )
        by_pid = await runs.fetch("SELECT pid, count(*) FROM test_job_runs GROUP BY pid")
    assert sorted(r["n"] for r in done) == list(range(300))
    assert {r["times"] for r in done} == {1}
    assert len(by_pid) == 2, by_pid  # both took a share


async def test_a_job_whose_worker_is_killed_is_done_by_another(
    database_url: str, runs: asyncpg.Connection, tmp_path: Path
) -> None:
    with (
        worker(database_url, tmp_path / "a.log") as a,
        worker(database_url, tmp_path / "b.log") as b,
    ):
        await enqueue(database_url, "test.block", 1)

        async def claimed() -> bool:
            return bool(await runs.fetchval("SELECT count(*) FROM test_job_runs"))

        await until(claimed, 30)
        claimant = await runs.fetchval("SELECT pid FROM test_job_runs")
        assert claimant in (a.pid, b.pid)
        os.kill(claimant, signal.SIGKILL)
        # The bound: the heartbeat timeout, then the survivor's next look at the queue, plus slack.
        bound = (jobs.HEARTBEAT + jobs.POLL).total_seconds() + 5

        async def done_again() -> bool:
            return bool(await runs.fetchval("SELECT count(*) FROM test_job_runs") >= 2)

        took = await until(done_again, bound, every=0.1)
        rows = await runs.fetch("SELECT pid FROM test_job_runs ORDER BY at")
        await asyncio.sleep(0.5)
        left = await runs.fetchval("SELECT count(*) FROM pgqueuer")
    survivor = b.pid if claimant == a.pid else a.pid
    assert [r["pid"] for r in rows] == [claimant, survivor], (took, rows)
    assert took < bound  # about 11 s here: HEARTBEAT (10 s), then a poll
    assert left == 0  # done, and gone from the queue
    await empty(database_url, "pgqueuer")


async def test_a_job_cut_off_by_sigterm_is_queued_again_at_once(
    database_url: str, runs: asyncpg.Connection, tmp_path: Path
) -> None:
    """SIGTERM: the worker claims nothing more, gives its running job the grace, then puts it back in the
    queue (not left to a heartbeat timeout) and exits 0; the next worker does it as it starts."""
    with worker(database_url, tmp_path / "a.log") as a:
        await enqueue(database_url, "test.block", 1)

        async def claimed() -> bool:
            return bool(await runs.fetchval("SELECT count(*) FROM test_job_runs"))

        await until(claimed, 30)
        a.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(a.wait, SHUTDOWN_GRACE_SECONDS + 10)
    assert code == 0, (tmp_path / "a.log").read_text()
    with worker(database_url, tmp_path / "b.log") as b:

        async def done_again() -> bool:
            return bool(await runs.fetchval("SELECT count(*) FROM test_job_runs") >= 2)

        took = await until(done_again, jobs.HEARTBEAT.total_seconds(), every=0.1)
        rows = await runs.fetch("SELECT pid FROM test_job_runs ORDER BY at")
        await asyncio.sleep(0.5)
        left = await runs.fetchval("SELECT count(*) FROM pgqueuer")
    assert [r["pid"] for r in rows] == [a.pid, b.pid], (took, rows)
    assert left == 0
    await empty(database_url, "pgqueuer")


async def test_the_worker_verb_runs_the_chores_and_stops_on_sigterm(
    database_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        key = await conn.fetchval(
            "INSERT INTO api_keys (name, key_hash, key_prefix, role) VALUES ('k', 'h', 'wg_', 'send') RETURNING id"
        )
        stale = await conn.fetchval(
            "INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, type, body, "
            "\"window\", status, created_at, updated_at) VALUES (gen_random_uuid(), $1, 'x', '123', "
            "'+15551234567', 'text', '{}', '{}', 'pending', now() - interval '1 minute', "
            "now() - interval '1 minute') RETURNING id",
            key,
        )
        with worker(database_url, tmp_path / "worker.log", "worker", module="window_gate.cli") as proc:

            async def expired() -> bool:
                return bool(
                    await conn.fetchval("SELECT status FROM messages WHERE id = $1", stale) == "unknown"
                )

            await until(expired, 20)  # the chore's schedule: every 10 s
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 10)
        assert code == 0, (tmp_path / "worker.log").read_text()
        assert "up to 4 jobs at once" in (tmp_path / "worker.log").read_text()
    finally:
        await conn.close()
        await empty(database_url, "messages", "api_keys")


@pytest.mark.parametrize("concurrency", ["0", "101", "-3", "many"])
def test_the_worker_verb_refuses_a_concurrency_out_of_bounds(
    concurrency: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["worker", "--concurrency", concurrency])
    assert stopped.value.code == 2  # argparse's usage error, before any setting or database is read
    assert f"{concurrency!r} is not a number from 1 to 100" in capsys.readouterr().err
