"""Relay benchmark: how fast the dispatcher empties a full outbox into a fast subscriber.

    ./dev run python -m bench.relay [--deliveries 100000] [--subscriptions 1,3] [--rounds 3]
                                    [--dispatcher worker|serve] [--receiver-workers 1] [--set NAME=VALUE]

Creates a scratch database on the local PostgreSQL and migrates it. In each round, for each count of
`meta.webhook` subscriptions (every number; alternating, so that a busy spell hits all alike): a
receiver (bench/receiver.py, raw ASGI under uvicorn, its own processes, answering 200 at once) and the
dispatcher (`window-gate worker`, or `window-gate serve --workers 1` with its jobs engine; no load) are
started and idle; then one transaction keeps a Meta delivery of one customer message per --subscriptions
--deliveries, with its outbox row as webhook ingest writes it (one per delivery, relay_fanout), and
commits. Timed from that commit until none is left to fan out or due (pending or failed): the fan-out to
every subscription included; meanwhile the CPU time of the dispatcher's
processes, of its database's PostgreSQL backends, of the receiver and of anything else is read from
/proc (bench/run.py's Sampler). Checked after each: every row `delivered`, one attempt each, and the
receiver got every event once per subscription, signed with its secret. Prints a markdown table with the
verdict (deliveries/s ≥ TARGET, median round of each count), writes bench/results/relay-<time>.json,
stops everything and drops the database.
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson

from bench.receiver import counts as receiver_counts
from bench.receiver import idle_share
from bench.run import (
    HERE,
    Sampler,
    Server,
    _admin,
    _fetch,
    _quiet,
    _revision,
    _serving,
    database_and_settings,
)
from tests.factories import PN, delivery, inbound
from window_gate import db
from window_gate.subscription import rules

TARGET = 2_000  # deliveries per second to a fast local subscriber
PLACEHOLDER = "wamid.RELAY"
# One Meta delivery per event, each to every subscription, ids in the order ingest writes them, and times
# as ingest at about 3,000 deliveries/s would have left them (statements of 16, 5 ms apart): the claim's
# plan depends on it (with one time for every row PostgreSQL sorts the whole table for each claim).
FILL = (
    "INSERT INTO webhook_deliveries (body, received_at) "
    "SELECT convert_to(replace($1::text, '" + PLACEHOLDER + "', 'wamid.relay.' || i), 'UTF8'), "
    "now() - ($2::int - i) / 16 * interval '5 ms' "
    "FROM generate_series(1, $2::int) i",
    "INSERT INTO relay_fanout (webhook_delivery_id, event_id, phone_number_ids, created_at) "
    "SELECT id, gen_random_uuid(), ARRAY['" + PN + "'], received_at FROM webhook_deliveries ORDER BY id",
)
EMPTY = "TRUNCATE relay_attempts, relay_deliveries, relay_fanout, subscriptions, webhook_deliveries"
DUE = (
    "SELECT (SELECT count(*) FROM relay_deliveries WHERE state IN ('pending', 'failed')) "
    "+ (SELECT count(*) FROM relay_fanout)"
)
CHECK = (
    "SELECT count(*) FILTER (WHERE state <> 'delivered'), (SELECT count(*) FROM relay_attempts) "
    "FROM relay_deliveries"
)
POLL_SECONDS = 0.25
PATIENCE = 900  # seconds an outbox may take to drain before the round fails
READY = b"jobs at once"  # `window-gate worker` is up


@dataclass
class Run:
    subscriptions: int
    round: int
    deliveries: int
    seconds: float  # from the commit that filled the outbox until nothing was due
    per_s: float
    steady_per_s: float  # between the receiver's first and last request
    first_after_s: float  # from the commit to the receiver's first request
    idle_share: float  # of the tenths of a second from the first request to the last, those with none
    longest_idle_s: float  # the longest run of those
    app_cpu_ms: float  # CPU time per delivery of the dispatcher's processes
    postgres_cpu_ms: float  # of its database's PostgreSQL backends
    receiver_cpu_ms: float  # of the receiver's processes
    receiver_cpus: float  # the receiver's CPU time over the drain's: near its workers' count, it is the limit
    app_cpus: float  # the dispatcher's, likewise
    foreign_cpus: float  # CPUs' worth of work by processes outside the benchmark meanwhile
    received: int  # requests the receiver answered
    distinct: int  # distinct events it got, over every subscription
    bad_signatures: int
    undelivered: int  # rows not `delivered` at the end
    attempts: int  # relay_attempts rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=100_000, help="outbox rows per run, in total")
    parser.add_argument(
        "--subscriptions",
        default="1,3",
        help="comma-separated subscription counts, one run of each per round",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dispatcher", choices=("worker", "serve"), default="worker")
    parser.add_argument("--receiver-workers", type=int, default=1, help="uvicorn workers of the receiver")
    database_and_settings(parser, "a setting for the dispatcher, e.g. WINDOW_GATE_RELAY_CONCURRENCY=32")
    args = parser.parse_args()
    try:
        args.subscriptions = [int(n) for n in args.subscriptions.split(",") if n.strip()]
    except ValueError:
        args.subscriptions = []
    if not args.subscriptions or min(args.subscriptions) < 1:
        parser.error("--subscriptions takes comma-separated counts, e.g. 1,3")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    name = args.database = f"window_gate_bench_relay_{secrets.token_hex(4)}"
    args.dsn = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    url = args.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        asyncio.run(_admin(args.admin_url, f'CREATE DATABASE "{name}"'))
        stack.callback(lambda: asyncio.run(_admin(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')))
        db.upgrade(url)
        args.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wg-relay-")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WINDOW_GATE_")}  # sandbox mode
        env["WINDOW_GATE_DATABASE_URL"] = url
        args.env = env
        args.dispatcher_env = env | dict(setting.split("=", 1) for setting in args.set)
        for i in range(1, args.rounds + 1):
            for n in args.subscriptions:
                runs.append(_run(args, n, i))
    _report(runs, args)


def _run(args: argparse.Namespace, subscriptions: int, round_: int) -> Run:
    events = args.deliveries // subscriptions
    got = args.tmp / f"receiver-{subscriptions}-{round_}"
    got.mkdir()
    bin_dir = Path(sys.executable).parent
    receiver = [str(bin_dir / "uvicorn"), "--app-dir", str(HERE.parent), "bench.receiver:app"]
    receiver += ["--host", "127.0.0.1", "--workers", str(args.receiver_workers)]
    receiver += ["--log-level", "warning", "--no-access-log"]
    asyncio.run(_admin(args.dsn, EMPTY))
    # The dispatcher stops first, then the receiver, which writes its counts as it stops.
    with contextlib.ExitStack() as servers:
        listening = servers.enter_context(
            _serving("receiver", receiver, args.env | {"BENCH_RECEIVER_DIR": str(got)}, args.tmp)
        )
        asyncio.run(_subscribe(args.dsn, listening, subscriptions, got))
        dispatcher = servers.enter_context(_dispatcher(args))
        time.sleep(2)  # its engine past start-up: polling the schedule
        busy = _quiet()
        note = f" (other processes busy: {busy:.2f} CPUs)" if busy > 0.2 else ""
        deliveries = events * subscriptions
        print(
            f"bench: {subscriptions} subscription(s), round {round_}: {deliveries:,} deliveries{note}",
            flush=True,
        )
        sampler = Sampler(dispatcher.proc.pid, -1, args.database, listening.proc.pid)
        committed, drained = asyncio.run(_fill_and_drain(args.dsn, events, sampler))
    undelivered, attempts = asyncio.run(_fetch(args.dsn, CHECK))
    paths = receiver_counts(got)
    seconds = drained - committed
    first = min((c.first for c in paths.values()), default=committed)
    last = max((c.last for c in paths.values()), default=drained)
    idle, longest = idle_share(paths)
    run = Run(
        subscriptions=subscriptions,
        round=round_,
        deliveries=deliveries,
        seconds=round(seconds, 2),
        per_s=deliveries / seconds,
        steady_per_s=deliveries / (last - first) if last > first else float("nan"),
        first_after_s=round(first - committed, 2),
        idle_share=round(idle, 3),
        longest_idle_s=longest,
        app_cpu_ms=1000 * sampler.cpu_seconds("app") / deliveries,
        postgres_cpu_ms=1000 * sampler.cpu_seconds("postgres") / deliveries,
        receiver_cpu_ms=1000 * sampler.cpu_seconds("upstream") / deliveries,
        receiver_cpus=sampler.cpu_seconds("upstream") / seconds,
        app_cpus=sampler.cpu_seconds("app") / seconds,
        foreign_cpus=round(sampler.foreign_cpus(), 2),
        received=sum(c.received for c in paths.values()),
        distinct=sum(min(c.distinct, events) for c in paths.values()),
        bad_signatures=sum(c.bad_signatures + c.unsigned for c in paths.values()),
        undelivered=undelivered,
        attempts=attempts,
    )
    print(
        f"bench: {deliveries:,} delivered in {seconds:.1f} s: {run.per_s:,.0f}/s, app CPU "
        f"{run.app_cpu_ms:.2f} ms each",
        flush=True,
    )
    return run


async def _subscribe(dsn: str, receiver: Server, n: int, got: Path) -> None:
    """`n` meta.webhook subscriptions for every number, each to its own path of the receiver, whose
    secrets it reads to check the signatures; made an hour ago, before the deliveries FILL dates back."""
    conn = await asyncpg.connect(dsn)
    secrets_by_path = {}
    try:
        for i in range(n):
            path, secret = f"/subscriber-{i}", rules.new_secret()
            await conn.execute(
                "INSERT INTO subscriptions (url, events, secret, created_at) "
                "VALUES ($1, $2, $3, now() - interval '1 hour')",
                receiver.url + path,
                [rules.META_WEBHOOK],
                secret,
            )
            secrets_by_path[path] = secret
    finally:
        await conn.close()
    (got / "secrets.json").write_text(json.dumps(secrets_by_path))


async def _fill_and_drain(dsn: str, events: int, sampler: Sampler) -> tuple[float, float]:
    """Fill the outbox in one transaction (analysed before it commits, as a table in use would be); the
    monotonic times of its commit and of the first poll that found nothing due."""
    body = orjson.dumps(delivery([inbound("15550000001", message_id=PLACEHOLDER)])).decode()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(FILL[0], body, events)
            await conn.execute(FILL[1])
            await conn.execute("ANALYZE webhook_deliveries, relay_fanout")
        committed = time.monotonic()
        sampler.sample()
        deadline = committed + PATIENCE
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            sampler.sample()
            if not await conn.fetchval(DUE):
                break
        return committed, time.monotonic()
    finally:
        await conn.close()


@contextlib.contextmanager
def _dispatcher(args: argparse.Namespace) -> Iterator[Server]:
    """`window-gate worker`, up once it says so; or `window-gate serve --workers 1`, its jobs engine in."""
    bin_dir = Path(sys.executable).parent
    if args.dispatcher == "serve":
        serve = [
            str(bin_dir / "window-gate"),
            "serve",
            "--host",
            "127.0.0.1",
            "--workers",
            "1",
            "--no-migrate",
        ]
        with _serving("dispatcher", serve, args.dispatcher_env, args.tmp) as server:
            yield server
        return
    with worker(args.dispatcher_env, args.tmp) as server:
        yield server


@contextlib.contextmanager
def worker(env: dict[str, str], tmp: Path, name: str = "dispatcher") -> Iterator[Server]:
    """A `window-gate worker` process (its own session), up once it says so; its log is tmp/<name>.log."""
    bin_dir = Path(sys.executable).parent
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "window-gate"), "worker"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while READY not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Server(name, proc, "")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    lines = [
        f"\n{_revision()} · dispatcher: {args.dispatcher} · receiver: {args.receiver_workers} worker(s) · "
        f"{args.deliveries:,} deliveries per run · {os.cpu_count()} CPUs"
        + (f" · {' '.join(args.set)}" if args.set else "")
        + "\n",
        "| subscriptions | round | seconds | deliveries/s | steady /s | first after s | idle (longest s) "
        "| CPU ms/delivery app + PG (+ receiver) | app CPUs | receiver CPUs | other CPU | received (distinct) "
        "| attempts | checks |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.subscriptions} | {r.round} | {r.seconds:.1f} | {r.per_s:,.0f} | {r.steady_per_s:,.0f} "
            f"| {r.first_after_s:.1f} | {r.idle_share:.0%} ({r.longest_idle_s:.1f}) "
            f"| {r.app_cpu_ms:.3f} + {r.postgres_cpu_ms:.3f} (+ {r.receiver_cpu_ms:.3f}) "
            f"| {r.app_cpus:.2f} | {r.receiver_cpus:.2f} | {r.foreign_cpus:.2f} "
            f"| {r.received:,} ({r.distinct:,}) "
            f"| {r.attempts:,} | {'ok' if _complete(r) else 'INCOMPLETE'} |"
        )
    lines += ["", "| target | measured | verdict |", "|---|--:|---|"]
    for n in args.subscriptions:
        of_n = [r for r in runs if r.subscriptions == n]
        median = statistics.median(r.per_s for r in of_n)
        lines.append(
            f"| relay ≥ {TARGET:,} deliveries/s, {n} subscription(s), median round | {median:,.0f} /s "
            f"(rounds: {', '.join(f'{r.per_s:,.0f}' for r in of_n)}) "
            f"| {'PASS' if median >= TARGET and all(map(_complete, of_n)) else 'FAIL'} |"
        )
    lines.append(
        "\nseconds: from the commit that filled the outbox until nothing was due; deliveries/s over that; "
        "steady /s: between the receiver's first and last request; first after: the commit to the first "
        "request (the schedule's tick); idle: the share of tenths of a second between the first and the "
        "last request in which none arrived (the dispatcher pausing), and the longest such pause. CPU: "
        "time of the dispatcher's processes, of its PostgreSQL "
        "backends and of the receiver per delivery; app/receiver CPUs: their CPU time over the run's (a "
        "receiver near its worker count is the bottleneck); other CPU: processes outside the benchmark "
        "(> 0.2 makes the rates pessimistic). checks: every row delivered with one attempt, every event "
        "received once per subscription, correctly signed."
    )
    print("\n".join(lines))
    out = HERE / "results" / f"relay-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("env", "dispatcher_env", "tmp")}
    out.write_text(
        json.dumps(
            {"config": config | {"revision": _revision()}, "runs": [asdict(r) for r in runs]}, indent=2
        )
        + "\n"
    )
    print(f"\nbench: results in {out.relative_to(HERE.parent)}")


def _complete(r: Run) -> bool:
    return (
        r.undelivered == 0
        and r.attempts == r.deliveries
        and r.distinct == r.deliveries
        and r.received == r.deliveries
        and r.bad_signatures == 0
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; processes stopped and database dropped")
