"""Release benchmark: from a customer's reply to the first of their held messages leaving for Meta.

    ./dev run python -m bench.release [--customers 1000] [--rounds 2] [--spread 0,5] [--workers 2]
                                      [--job-workers 0] [--set NAME=VALUE]

Creates a scratch database on the local PostgreSQL, migrates it and seeds, per run, --customers customers
whose window on the bench number closed 30 hours ago. Starts bench/upstream.py in its own process, as the
Graph API, recording when each send arrived and what it carried, and `window-gate serve --workers N` out of
sandbox mode sending to it (with --job-workers, that many `window-gate worker` processes run the jobs and
`serve` none: JOBS_IN_SERVE=false). Then, for each round and each --spread (alternating, so that a busy
spell hits all alike), on customers of its own:
- holds: 1–3 text messages per customer (1, 2, 3, 1, …: 2 on average) through POST /v1/messages with
  `if_window_closed`, one customer's in order, 32 customers at once: the first of each sends the
  re-engagement template (to the upstream), every one answers 202 `held`;
- replies: each customer's signed message to POST /webhooks/whatsapp, all at once (spread 0: every request
  started together, a connection each) or started evenly over `spread` seconds; the time of each 200 kept;
- measured, per customer: from its webhook's 200 to the upstream's receipt of its first held message
  (p50/p90/p99/max); and from the first reply sent until every first message, and every held message, had
  arrived. Beside it: the webhooks' own round trips, how long the release jobs waited in the queue
  (pgqueuer_log: queued → picked), and the CPU time of the gate's processes, of its PostgreSQL backends, of
  the upstream and of this client from the first reply until the last held message was accepted
  (bench/run.py's Sampler).
Checked: every held message arrived exactly once, each customer's in the order they were held, and each
is `accepted` in the database (its wait `released`); nothing else of the run's customers arrived. Prints a
markdown table, writes bench/results/release-<time>.json, stops everything and drops the database.
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
from sqlalchemy import text

from bench.relay import worker
from bench.run import (
    APP_SECRET,
    HERE,
    Sampler,
    Server,
    _admin,
    _metrics_env,
    _quiet,
    _revision,
    _send_env,
    _serving,
    database_and_settings,
)
from tests.factories import PN, delivery, inbound, signed
from window_gate import db
from window_gate.apikey import service as api_keys
from window_gate.apikey.rules import Role

TEMPLATE = {"name": "reopen_conversation", "language": {"code": "en"}}
HOLD_SECONDS = 3600
MOST_HELD = 3  # customer i holds 1 + i % MOST_HELD messages
SEED_CONCURRENCY = 32  # customers whose holds are being made at once
PATIENCE = 300  # seconds a run's held messages may take to arrive before it fails
POLL_SECONDS = 0.1
SEED = (
    "INSERT INTO customers (wa_id) SELECT '1777' || lpad(i::text, 7, '0') FROM generate_series(1, $1::int) i",
    "INSERT INTO customer_aliases (alias, customer_id, source) SELECT wa_id, id, 'bench' FROM customers",
    # Their last message 30 hours ago: the window closed, a free-form send is refused (and held).
    "INSERT INTO windows (phone_number_id, customer_id, last_inbound_at, last_inbound_message_id) "
    f"SELECT '{PN}', id, now() - interval '30 hours', 'wamid.seed.' || id FROM customers",
)
# The run's held messages by status, and its customers' waits by state.
STATUSES = (
    "SELECT 'message ' || status, count(*) FROM messages WHERE id = ANY($1::uuid[]) GROUP BY status "
    "UNION ALL SELECT 'wait ' || c.state, count(*) FROM continuations c "
    "JOIN customers u ON u.id = c.customer_id WHERE u.wa_id = ANY($2::text[]) GROUP BY c.state"
)
UNSETTLED = ("message held", "message pending", "wait sending", "wait awaiting_reply", "wait replied")
QUEUE_WAITS = (
    "SELECT extract(epoch FROM p.created - q.created) FROM pgqueuer_log q "
    "JOIN pgqueuer_log p ON p.job_id = q.job_id AND p.status = 'picked' "
    "WHERE q.status = 'queued' AND q.entrypoint = 'conversation.release' AND q.created >= $1"
)


@dataclass
class Run:
    round: int
    spread: float  # seconds over which the replies were started; 0: all at once
    customers: int
    held: int
    release_p50_ms: float  # a customer's webhook 200 → their first held message at the upstream
    release_p90_ms: float
    release_p99_ms: float
    release_max_ms: float
    firsts_out_s: float  # first reply sent → every customer's first held message arrived
    all_out_s: float  # first reply sent → every held message arrived
    replies_s: float  # first reply sent → last 200
    webhook_p50_ms: float  # a reply's round trip
    webhook_p99_ms: float
    queue_wait_p50_ms: float  # a release job's wait in the queue (queued → picked)
    queue_wait_p99_ms: float
    app_cpus: float  # CPUs' worth of work meanwhile: the gate's processes (serve and workers)
    postgres_cpus: float  # its PostgreSQL backends
    upstream_cpus: float
    client_cpus: float  # this process (the replies, the polling)
    other_cpus: float  # everything else (another user of the machine)
    app_cpu_ms: float  # gate CPU time per held message released (reply ingest included)
    postgres_cpu_ms: float
    problems: list[str] = field(default_factory=list)  # failed checks; empty: every check passed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1000, help="customers replying in each run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--spread",
        default="0,5",
        help="comma-separated seconds over which a run's replies are started, one run of each per round "
        "(0: all at once)",
    )
    parser.add_argument("--workers", type=int, default=2, help="`serve` worker processes")
    parser.add_argument(
        "--job-workers",
        type=int,
        default=0,
        help="`window-gate worker` processes running the jobs (then `serve` runs none); 0: `serve` runs them",
    )
    database_and_settings(parser, "a setting for the gate's processes, e.g. WINDOW_GATE_JOBS_CONCURRENCY=32")
    args = parser.parse_args()
    try:
        args.spread = [float(s) for s in args.spread.split(",") if s.strip()]
    except ValueError:
        args.spread = []
    if not args.spread or min(args.spread) < 0 or args.customers < 1 or args.rounds < 1:
        parser.error("--spread takes comma-separated seconds (≥ 0); --customers and --rounds at least 1")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    name = args.database = f"window_gate_bench_release_{secrets.token_hex(4)}"
    args.dsn = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    url = args.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    plan = [(i, spread) for i in range(1, args.rounds + 1) for spread in args.spread]
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        asyncio.run(_admin(args.admin_url, f'CREATE DATABASE "{name}"'))
        stack.callback(lambda: asyncio.run(_admin(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')))
        db.upgrade(url)
        args.key = asyncio.run(_seed(url, args.customers * len(plan)))
        tmp = args.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wg-release-")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WINDOW_GATE_")}
        env["WINDOW_GATE_DATABASE_URL"] = url
        bin_dir = Path(sys.executable).parent
        uvicorn = [str(bin_dir / "uvicorn"), "--app-dir", str(HERE.parent), "--log-level", "warning"]
        uvicorn += ["--no-access-log", "bench.upstream:app", "--host", "127.0.0.1", "--workers", "1"]
        upstream = stack.enter_context(
            _serving("upstream", uvicorn, env | {"BENCH_UPSTREAM_RECORD": "1"}, tmp)
        )
        (tmp / "metrics").mkdir()
        gate_env = _metrics_env(_send_env(env, upstream), tmp, args.workers)
        gate_env |= dict(setting.split("=", 1) for setting in args.set)
        serve = [str(bin_dir / "window-gate"), "serve", "--host", "127.0.0.1"]
        serve += ["--workers", str(args.workers), "--no-migrate"]
        jobs_in_serve = {"WINDOW_GATE_JOBS_IN_SERVE": "false"} if args.job_workers else {}
        gate = stack.enter_context(_serving("gate", serve, gate_env | jobs_in_serve, tmp))
        workers = [
            stack.enter_context(worker(gate_env, tmp, f"worker-{n}")) for n in range(1, args.job_workers + 1)
        ]
        args.config = _config(args, gate_env)
        print(f"bench: database {name}; gate: {args.config}", flush=True)
        for n, (round_, spread) in enumerate(plan):
            first = n * args.customers + 1
            runs.append(asyncio.run(_run(args, gate, workers, upstream, round_, spread, first)))
    _report(runs, args)


def _config(args: argparse.Namespace, env: dict[str, str]) -> str:
    concurrency = env.get("WINDOW_GATE_JOBS_CONCURRENCY", "4 (default)")
    where = f"{args.job_workers} `window-gate worker`" if args.job_workers else "in serve"
    sets = [s for s in args.set if not s.startswith("WINDOW_GATE_JOBS_CONCURRENCY=")]
    return f"serve --workers {args.workers} · jobs {where} · JOBS_CONCURRENCY {concurrency}" + "".join(
        f" · {s}" for s in sets
    )


async def _seed(url: str, customers: int) -> str:
    """The customers, each with a closed window on PN; returns a send API key."""
    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            for statement in SEED:
                await conn.execute(text(statement.replace("$1::int", str(int(customers)))))
            return await api_keys.create(conn, "bench-release", Role.SEND)
    finally:
        await engine.dispose()


def _wa_id(n: int) -> str:
    return f"1777{n:07d}"


async def _run(
    args: argparse.Namespace,
    gate: Server,
    workers: list[Server],
    upstream: Server,
    round_: int,
    spread: float,
    first: int,
) -> Run:
    customers = [_wa_id(n) for n in range(first, first + args.customers)]
    tag = f"r{first}."  # starts every held text of this run
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        started = time.monotonic()
        held = await _hold(http, gate.url, args.key, customers, tag)
        count = len(_texts(await _records(http, upstream.url), tag))
        if count:
            raise RuntimeError(f"{count} held messages of this run reached the upstream before any reply")
        held_ids = [i for ids in held.values() for i, _ in ids]
        conn = await asyncpg.connect(args.dsn)
        try:
            await conn.execute("ANALYZE")  # the tables in use, as autovacuum would have them
            busy = await asyncio.to_thread(_quiet)
            note = f" (other processes busy: {busy:.2f} CPUs)" if busy > 0.2 else ""
            print(
                f"bench: round {round_}, spread {spread:g} s: {len(customers):,} customers hold "
                f"{len(held_ids):,} messages (made in {time.monotonic() - started:.1f} s){note}",
                flush=True,
            )
            since = await conn.fetchval("SELECT now()")
            samplers = [
                Sampler(s.proc.pid, os.getpid(), args.database, upstream.proc.pid) for s in [gate, *workers]
            ]
            for sampler in samplers:
                sampler.sample()
            before = await _count(http, upstream.url)
            begun = time.monotonic()
            replies = await _reply(http, gate.url, customers, spread)
            await _arrived(http, upstream.url, tag, len(held_ids), before)
            settled = await _settled(conn, held_ids, customers)
            ended = time.monotonic()
            for sampler in samplers:
                sampler.sample()
            waits = [float(w) for (w,) in await conn.fetch(QUEUE_WAITS, since)]
        finally:
            await conn.close()
        records = _texts(await _records(http, upstream.url), tag)
    problems = _check(held, records, replies, settled, len(customers))
    arrivals = _firsts(records)
    latencies = [1000 * (arrivals[c] - replies[c][1]) for c in customers if c in arrivals and c in replies]
    trips = [1000 * (done - sent) for sent, done, _ in replies.values()]
    seconds = ended - begun

    def cpus(kind: str) -> float:
        return sum(s.cpu_seconds(kind) for s in samplers) / seconds

    gate_sampler = samplers[0]  # PostgreSQL, upstream, client and others: counted once
    run = Run(
        round=round_,
        spread=spread,
        customers=len(customers),
        held=len(held_ids),
        release_p50_ms=_pct(latencies, 50),
        release_p90_ms=_pct(latencies, 90),
        release_p99_ms=_pct(latencies, 99),
        release_max_ms=max(latencies, default=float("nan")),
        firsts_out_s=max(arrivals.values(), default=float("nan")) - begun,
        all_out_s=max((at for at, *_ in records), default=float("nan")) - begun,
        replies_s=max((done for _, done, _ in replies.values()), default=float("nan")) - begun,
        webhook_p50_ms=_pct(trips, 50),
        webhook_p99_ms=_pct(trips, 99),
        queue_wait_p50_ms=_pct([1000 * w for w in waits], 50),
        queue_wait_p99_ms=_pct([1000 * w for w in waits], 99),
        app_cpus=cpus("app"),
        postgres_cpus=gate_sampler.cpu_seconds("postgres") / seconds,
        upstream_cpus=gate_sampler.cpu_seconds("upstream") / seconds,
        client_cpus=gate_sampler.cpu_seconds("wrk") / seconds,
        other_cpus=gate_sampler.foreign_cpus(),
        app_cpu_ms=1000 * cpus("app") * seconds / len(held_ids),
        postgres_cpu_ms=1000 * gate_sampler.cpu_seconds("postgres") / len(held_ids),
        problems=problems,
    )
    print(
        f"bench: replies answered in {run.replies_s:.2f} s; release p50 {run.release_p50_ms:,.0f} ms, p99 "
        f"{run.release_p99_ms:,.0f} ms; every first out after {run.firsts_out_s:.2f} s, every held message "
        f"after {run.all_out_s:.2f} s; {'; '.join(problems) or 'checks ok'}",
        flush=True,
    )
    return run


async def _hold(
    http: aiohttp.ClientSession, gate: str, key: str, customers: list[str], tag: str
) -> dict[str, list[tuple[str, str]]]:
    """Each customer's held messages (id, text), in the order they were held."""
    headers = {"Authorization": f"Bearer {key}"}
    held: dict[str, list[tuple[str, str]]] = {}
    room = asyncio.Semaphore(SEED_CONCURRENCY)

    async def one(n: int, wa_id: str) -> None:
        async with room:
            held[wa_id] = []
            for k in range(1 + n % MOST_HELD):
                body = f"{tag}{wa_id}.{k}"
                request = {
                    "phone_number_id": PN,
                    "to": wa_id,
                    "type": "text",
                    "text": {"body": body},
                    "if_window_closed": {"template": TEMPLATE, "hold_seconds": HOLD_SECONDS},
                }
                async with http.post(f"{gate}/v1/messages", json=request, headers=headers) as answer:
                    out = await answer.json()
                    if answer.status != 202 or out.get("status") != "held":
                        raise RuntimeError(f"holding for {wa_id}: {answer.status} {out}")
                held[wa_id].append((out["id"], body))

    await asyncio.gather(*(one(n, wa_id) for n, wa_id in enumerate(customers)))
    return held


async def _reply(
    http: aiohttp.ClientSession, gate: str, customers: list[str], spread: float
) -> dict[str, tuple[float, float, int]]:
    """Each customer's signed reply, all started at once or evenly over `spread` seconds; per customer
    (sent, answered, status), monotonic."""
    signed_bodies = [signed(delivery([inbound(wa_id)]), APP_SECRET) for wa_id in customers]
    start = time.monotonic()
    step = spread / len(customers)

    async def one(i: int) -> tuple[float, float, int]:
        if step:
            await asyncio.sleep(max(0.0, start + i * step - time.monotonic()))
        body, headers = signed_bodies[i]
        sent = time.monotonic()
        async with http.post(f"{gate}/webhooks/whatsapp", data=body, headers=headers) as answer:
            await answer.read()
            return sent, time.monotonic(), answer.status

    answered = await asyncio.gather(*(one(i) for i in range(len(customers))))
    return dict(zip(customers, answered, strict=True))


async def _records(http: aiohttp.ClientSession, upstream: str) -> list[tuple[float, str, str, str]]:
    async with http.get(f"{upstream}/records") as answer:
        return [(float(at), str(to), str(kind), str(body)) for at, to, kind, body in await answer.json()]


def _texts(records: list[tuple[float, str, str, str]], tag: str) -> list[tuple[float, str, str, str]]:
    return [r for r in records if r[2] == "text" and r[3].startswith(tag)]


async def _count(http: aiohttp.ClientSession, upstream: str) -> int:
    async with http.get(f"{upstream}/count") as answer:
        return int((await answer.json())["count"])


async def _arrived(http: aiohttp.ClientSession, upstream: str, tag: str, expected: int, before: int) -> int:
    """Wait (PATIENCE at most) until the upstream has had `expected` texts of this run, `before` sends
    having arrived before its replies; how many it had. Polls the count only: reading every record of
    every run so far, ten times a second, made this client a growing load beside the gate."""
    deadline = time.monotonic() + PATIENCE
    seen = 0
    while time.monotonic() < deadline:
        if await _count(http, upstream) >= before + expected:  # then count this run's only, once
            seen = len(_texts(await _records(http, upstream), tag))
            if seen >= expected:
                return seen
        await asyncio.sleep(POLL_SECONDS)
    return seen


async def _settled(conn: asyncpg.Connection, ids: list[str], customers: list[str]) -> dict[str, int]:
    """ "message <status>" / "wait <state>" → count, once every held message is past `pending` and every
    wait over (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        rows = {what: n for what, n in await conn.fetch(STATUSES, ids, customers)}
        if not set(rows) & set(UNSETTLED) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(POLL_SECONDS)


def _check(
    held: dict[str, list[tuple[str, str]]],
    records: list[tuple[float, str, str, str]],
    replies: dict[str, tuple[float, float, int]],
    settled: dict[str, int],
    customers: int,
) -> list[str]:
    """Every held message arrived once, each customer's in order; all accepted, their waits released."""
    problems = []
    refused = sum(status != 200 for _, _, status in replies.values())
    if refused or len(replies) != customers:
        problems.append(f"{refused} replies not answered 200 (of {len(replies)})")
    got: dict[str, list[str]] = {}
    for _, to, _, body in sorted(records):
        got.setdefault(to, []).append(body)
    expected = {wa_id: [body for _, body in messages] for wa_id, messages in held.items()}
    bodies = [body for _, _, _, body in records]
    if len(bodies) != len(set(bodies)):
        problems.append(f"{len(bodies) - len(set(bodies))} held messages arrived more than once")
    if missing := sum(len(set(v) - set(got.get(k, []))) for k, v in expected.items()):
        problems.append(f"{missing} held messages never arrived")
    if unordered := sum(
        1 for k, v in expected.items() if got.get(k) and got[k] != v and set(got[k]) == set(v)
    ):
        problems.append(f"{unordered} customers' held messages arrived out of order")
    if strangers := set(got) - set(expected):
        problems.append(f"{len(strangers)} unexpected recipients")
    total = sum(len(v) for v in expected.values())
    if settled != {"message accepted": total, "wait released": customers}:
        problems.append(f"in the database: {settled}, expected {total} accepted, {customers} released")
    return problems


def _firsts(records: list[tuple[float, str, str, str]]) -> dict[str, float]:
    """Each customer's first held message's arrival."""
    firsts: dict[str, float] = {}
    for at, to, _, _ in records:
        firsts[to] = min(at, firsts.get(to, at))
    return firsts


def _pct(values: list[float], p: int) -> float:
    """The p-th percentile, nearest rank (of 1,000: p99 is the 990th)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * p // 100) - 1)]


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    lines = [
        f"\n{_revision()} · {args.config} · {args.customers:,} customers per run, 1–{MOST_HELD} held messages "
        f"each · {os.cpu_count()} CPUs\n",
        "| round | spread s | held | release p50 / p90 / p99 / max ms | every first out s | all out s "
        "| replies answered s | webhook p50 / p99 ms | job queue wait p50 / p99 ms "
        "| CPUs app + PG (+ upstream, client) | CPU ms/held msg app + PG | other CPUs | checks |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.round} | {r.spread:g} | {r.held:,} "
            f"| {r.release_p50_ms:,.0f} / {r.release_p90_ms:,.0f} / {r.release_p99_ms:,.0f} / "
            f"{r.release_max_ms:,.0f} | {r.firsts_out_s:.2f} | {r.all_out_s:.2f} | {r.replies_s:.2f} "
            f"| {r.webhook_p50_ms:,.0f} / {r.webhook_p99_ms:,.0f} "
            f"| {r.queue_wait_p50_ms:,.0f} / {r.queue_wait_p99_ms:,.0f} "
            f"| {r.app_cpus:.2f} + {r.postgres_cpus:.2f} (+ {r.upstream_cpus:.2f}, {r.client_cpus:.2f}) "
            f"| {r.app_cpu_ms:.2f} + {r.postgres_cpu_ms:.2f} | {r.other_cpus:.2f} "
            f"| {'; '.join(r.problems) or 'ok'} |"
        )
    lines += ["", "| target | measured | verdict |", "|---|--:|---|"]
    for spread in args.spread:
        of = [r for r in runs if r.spread == spread]
        worst = max(r.release_p99_ms for r in of)
        lines.append(
            f"| release p99 ≤ 1 s, {args.customers:,} replies over {spread:g} s (worst round) "
            f"| {worst:,.0f} ms (rounds: {', '.join(f'{r.release_p99_ms:,.0f}' for r in of)}) "
            f"| {'PASS' if worst <= 1000 and not any(r.problems for r in of) else 'FAIL'} |"
        )
    lines.append(
        "\nrelease: from a customer's webhook 200 (at this client) to the upstream's receipt of their first "
        "held message (time.monotonic() in both processes). every first out / all out: from the first reply "
        "sent until the last customer's first held message / the last held message arrived. job queue wait: "
        "a `conversation.release` job from its enqueue (ingest's transaction) until a process claimed it. "
        "CPUs: CPU time over the run's (first reply → last held message accepted) of the gate's processes, "
        "its PostgreSQL backends, the upstream and this client (2 CPUs: the machine is full near 2); "
        "CPU ms/held msg: the same per held message (the replies' ingest included). other: processes "
        "outside the benchmark (> 0.2 makes latencies pessimistic)."
    )
    print("\n".join(lines))
    out = HERE / "results" / f"release-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("tmp", "key")}
    report = {"config": config | {"revision": _revision()}, "runs": [asdict(r) for r in runs]}
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nbench: results in {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; processes stopped and database dropped")
