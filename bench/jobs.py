"""Jobs benchmark: what an enqueue adds to a business transaction, and jobs done per second by one
`window-gate worker` process and by two.

    ./dev run python -m bench.jobs [--transactions 2000] [--jobs 5000] [--concurrency 8]

Creates a scratch database on the local PostgreSQL and migrates it. Enqueue cost: the same transaction
(one INSERT into webhook_deliveries, commit) timed over one connection without and with a
`jobs.enqueue` in it, interleaved. Throughput: workers (this module as `window-gate worker`, with two
more tasks) are started and up; N jobs are committed at once; timed from the commit until the queue is
empty. `bench.noop` does nothing (the engine's own cost); `bench.write` runs one INSERT in its own
transaction, like a chore or a relay's bookkeeping. Prints a markdown table; drops the database.
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy import text

from window_gate import background, db, jobs

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parents[1]
extra = jobs.Registry()


@extra.task("bench.noop")
async def noop(ctx: jobs.Context, payload: jobs.Payload) -> None:
    return None


@extra.task("bench.write")
async def write(ctx: jobs.Context, payload: jobs.Payload) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(text("INSERT INTO webhook_deliveries (body) VALUES ('{}')"))


async def enqueue_cost(url: str, transactions: int) -> tuple[list[float], list[float]]:
    engine = db.make_engine(url, 1, 30)
    plain, with_job = [], []
    try:
        for i in range(transactions * 2):
            start = time.perf_counter()
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO webhook_deliveries (body) VALUES ('{}')"))
                if i % 2:
                    await jobs.enqueue(conn, "bench.none", {"n": i})
            (with_job if i % 2 else plain).append((time.perf_counter() - start) * 1000)
    finally:
        await engine.dispose()
    return plain, with_job


async def drain(url: str, workers: int, entrypoint: str, count: int, concurrency: int, logs: Path) -> float:
    outputs = [logs / f"worker-{entrypoint}-{workers}-{w}.log" for w in range(workers)]
    procs = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bench.jobs", "--worker", "--concurrency", str(concurrency)),
            env={**os.environ, "WINDOW_GATE_DATABASE_URL": url},
            stdout=await asyncio.to_thread(out.open, "wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for out in outputs
    ]
    try:
        while not all(b"jobs at once" in log for log in await asyncio.to_thread(read, outputs)):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # past start-up: listening, polling
        engine = db.make_engine(url, 1, 60)
        async with engine.begin() as conn:
            for n in range(count):
                await jobs.enqueue(conn, entrypoint, {"n": n})
        start = time.perf_counter()
        await engine.dispose()
        pg = await asyncpg.connect(url.replace("+asyncpg", ""))
        while await pg.fetchval("SELECT count(*) FROM pgqueuer WHERE entrypoint = $1", entrypoint):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        took = time.perf_counter() - start
        await pg.close()
        return count / took
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            await p.wait()


def read(paths: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in paths]


def pct(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


async def main(args: argparse.Namespace) -> None:
    name = f"wg_bench_jobs_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    logs = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        await asyncio.to_thread(db.upgrade, url)
        plain, with_job = await enqueue_cost(url, args.transactions)
        rates = {}
        for entrypoint in ("bench.noop", "bench.write"):
            for workers in (1, 2):
                rates[entrypoint, workers] = await drain(
                    url, workers, entrypoint, args.jobs, args.concurrency, logs
                )
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    print(f"\nEnqueue inside a transaction ({args.transactions} each, one connection, interleaved)\n")
    print("| transaction | mean ms | p50 ms | p99 ms |\n|---|---|---|---|")
    for label, values in (("INSERT, commit", plain), ("INSERT + jobs.enqueue, commit", with_job)):
        print(
            f"| {label} | {statistics.mean(values):.3f} | {pct(values, 0.5):.3f} | {pct(values, 0.99):.3f} |"
        )
    added = statistics.mean(with_job) - statistics.mean(plain)
    print(f"\nAn enqueue adds {added:.3f} ms to the transaction (mean).")
    print(f"\nJobs done per second ({args.jobs} jobs, --concurrency {args.concurrency} per worker)\n")
    print("| task | 1 worker | 2 workers |\n|---|---|---|")
    for entrypoint in ("bench.noop", "bench.write"):
        print(f"| {entrypoint} | {rates[entrypoint, 1]:.0f}/s | {rates[entrypoint, 2]:.0f}/s |")


def worker(concurrency: str) -> None:
    from window_gate.cli import main as cli

    everything = background.registry

    def registry() -> jobs.Registry:
        return everything().include(extra)

    background.registry = registry
    cli(["worker", "--concurrency", concurrency])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.worker:
        worker(str(parsed.concurrency))
    else:
        asyncio.run(main(parsed))
