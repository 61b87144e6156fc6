"""Load benchmark: window checks, webhook ingest and gated sends over real sockets, beside bare-stack
references.

    ./dev run python -m bench.run [--workers 2] [--duration 12] [--rounds 3] [--set NAME=VALUE]
                                  [--only window,webhook,send,burst] [--burst 50,500] [--upstream-delay-ms 300]

Creates a scratch database on the local PostgreSQL, migrates it, seeds 100,000 windows (for sends also
10,000 open ones and a month of earlier sends, in the service's tables and the reference's), starts
`window-gate serve` and bench/reference.py (same uvicorn, same worker count) on free ports and drives
them with wrk (bench/load.lua): window checks in paired rounds (reference, then service; the median
round counts), then signed webhook deliveries of 1 and of 100 new messages, then free-form sends
(POST /v1/messages, text, to seeded customers whose window is open; no Idempotency-Key) in paired
rounds against bench/reference_send.py, both sending to bench/upstream.py (a minimal Graph API
stand-in in its own uvicorn process) with the service out of sandbox mode; then the same sends in bursts:
one worker, an upstream that answers after 300 ms, 50 and then 500 connections in each round, for the
gate's CPU time per send at each (it must not grow with the crowd). Meanwhile it reads /proc
for each worker's RSS and for the CPU time of the server, of its PostgreSQL backends and of any other
process (the machine may be shared). Prints a markdown table with a verdict per target, writes
bench/results/<time>.json, stops both servers and drops the database. Needs wrk (`apt-get install -y wrk`).
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from tests.factories import PN, delivery, inbound, signed
from window_gate import db
from window_gate.apikey import service as api_keys
from window_gate.apikey.rules import Role

HERE = Path(__file__).resolve().parent
WINDOWS = 100_000
NEW_CUSTOMER_SHARE = 0.05  # webhook messages from customers not seen before (the slower, linking path)
# Pre-signed bodies per second of load; a run faster than this reuses bodies and says so ("wrapped").
POOL_RATE = {1: 5_000, 100: 250}
SEED = (
    f"INSERT INTO customers (wa_id) SELECT '1555' || lpad(i::text, 7, '0') FROM generate_series(1, {WINDOWS}) i",
    "INSERT INTO customer_aliases (alias, customer_id, source) SELECT wa_id, id, 'bench' FROM customers",
    # Last inbound up to 36 h ago: a realistic mix of open, closing and expired windows.
    "INSERT INTO windows (phone_number_id, customer_id, last_inbound_at, last_inbound_message_id) "
    f"SELECT '{PN}', id, now() - random() * interval '36 hours', 'wamid.seed.' || id FROM customers",
    "ANALYZE",
)
SENDS = 10_000  # customers the send load picks from, each with an open window
SEND_FIRST = 1_000_000  # their numbers: 1555 then SEND_FIRST + 1 …, apart from the window check's
SEED_SEND = (
    "INSERT INTO customers (wa_id) SELECT '1555' || lpad(i::text, 7, '0') "
    f"FROM generate_series({SEND_FIRST + 1}, {SEND_FIRST + SENDS}) i",
    "INSERT INTO customer_aliases (alias, customer_id, source) SELECT wa_id, id, 'bench' FROM customers "
    f"WHERE wa_id >= '1555{SEND_FIRST + 1:07d}' ON CONFLICT DO NOTHING",
    "INSERT INTO windows (phone_number_id, customer_id, last_inbound_at, last_inbound_message_id) "
    f"SELECT '{PN}', id, now(), 'wamid.seed.' || id FROM customers WHERE wa_id >= '1555{SEND_FIRST + 1:07d}'",
    "CREATE TABLE bench_sends (id uuid PRIMARY KEY, recipient text, status text, wamid text)",
)
# A month of earlier sends, for the service and the reference alike: both are measured in use. (Once the
# seed's ANALYZE had seen their tables empty, PostgreSQL planned each send's update and foreign-key checks
# as scans of them until the next ANALYZE.)
HISTORY = 100_000
SEED_HISTORY = (
    "INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, recipient_wa_id, type, "
    "body, status, graph_message_id, created_at, updated_at) "
    "SELECT gen_random_uuid(), (SELECT id FROM api_keys WHERE name = 'bench-send'), 'seed', "
    f"'{PN}', w, w, 'text', '{{}}', 'read', 'wamid.hist.' || i, t, t "
    f"FROM generate_series(1, {HISTORY}) i, LATERAL (SELECT '1555' || lpad((i % {SENDS} + {SEND_FIRST} + 1)::text, 7, '0') AS w, "
    "now() - random() * interval '30 days' AS t) x",
    "INSERT INTO message_events (message_id, status, at) SELECT id, status, created_at FROM messages",
    "INSERT INTO bench_sends SELECT id, recipient_input, status, graph_message_id FROM messages",  # the same
    "ANALYZE",
)
SEND_BODY = (
    f'{{"phone_number_id": "{PN}", "messaging_product": "whatsapp", "to": "%s", "type": "text", '
    '"text": {"body": "Your order has shipped"}}'
)
UPSTREAM_WORKERS = 1
SCENARIOS = ("window", "webhook", "send", "burst")
TARGETS = {
    "ratio_rps": 0.60,
    "ratio_p99": 2.0,
    "single_per_s": 2_000,
    "batch_messages_per_s": 10_000,
    "burst_cpu_ratio": 1.5,  # gate CPU per send at the largest burst over that at the smallest
}
BURST_WORKERS = 1  # one process: its CPU time per send is the figure, undiluted by uvicorn's accept balance
BURST_WRK_TIMEOUT = "30s"  # a slow burst must finish its requests, not turn them into wrk timeouts
RSS_LIMIT_MIB = 200
SETTLED = (
    "SELECT (SELECT count(*) FROM inbound_messages), sessions FROM pg_stat_database "
    "WHERE datname = current_database()"
)
ACCEPTED = "SELECT count(*) FROM messages WHERE status = 'accepted'"
IDLE_TICKS = 1  # CPU ticks in half a second (2 %) of a server with nothing left to answer
_SERIES = itertools.count(10)  # numbers the body files, so that no message id repeats across them
# With few keep-alive connections one uvicorn worker may accept nearly all of them: measure again.
MIN_BALANCE, ATTEMPTS = 0.5, 3
QUIET_CPUS = 0.2  # before each scenario, wait (a while) for other processes to leave the CPUs this idle


@dataclass
class Server:
    name: str
    proc: "subprocess.Popen[bytes]"
    url: str


@dataclass
class Result:
    scenario: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    messages_per_s: float | None = None
    recorded_per_s: float | None = None  # inbound_messages rows written per second, read back from the DB
    wrapped: int = 0
    app_cpu_ms: float = 0.0  # CPU time per request of the server's processes
    postgres_cpu_ms: float = 0.0  # and of its PostgreSQL backends
    foreign_cpus: float = 0.0  # CPU taken meanwhile by processes outside the benchmark
    connections_opened: int = 0  # new PostgreSQL sessions during the load: pool churn
    balance: float = 1.0  # CPU of the least busy worker / of the busiest: uvicorn's accept is first come
    upstream_cpu_ms: float = 0.0  # CPU time per request of the Graph API stand-in (sends only)
    sends: int | None = None  # sends accepted, idle to idle (bursts: the CPU figures are per send)
    attempt: int = 1
    rss_mib: dict[int, float] = field(default_factory=dict)  # worker pid → max RSS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=12, help="seconds of load per scenario")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before each scenario")
    parser.add_argument(
        "--rounds", type=int, default=3, help="window check rounds (reference, service); the median counts"
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run, of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--burst",
        default="50,500",
        help="burst: comma-separated concurrent sends (wrk connections) per round",
    )
    parser.add_argument(
        "--upstream-delay-ms", type=int, default=300, help="burst: how long the upstream takes to answer"
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("WINDOW_GATE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL database to connect to for CREATE/DROP DATABASE",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the service only, e.g. WINDOW_GATE_DB_POOL_SIZE=20 (default: none, sandbox mode)",
    )
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if not only or only - set(SCENARIOS):
        parser.error(f"--only takes some of {', '.join(SCENARIOS)}")
    args.only = [name for name in SCENARIOS if name in only]
    try:
        args.burst = sorted({int(n) for n in args.burst.split(",") if n.strip()})
    except ValueError:
        args.burst = []
    if not args.burst or min(args.burst) < 1:
        parser.error("--burst takes comma-separated connection counts, e.g. 50,500")
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing; install it with `apt-get install -y wrk`")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the clean-up below runs

    name = args.database = f"window_gate_bench_{secrets.token_hex(4)}"
    dsn = args.dsn = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    with contextlib.ExitStack() as stack:
        asyncio.run(_admin(args.admin_url, f'CREATE DATABASE "{name}"'))
        stack.callback(lambda: asyncio.run(_admin(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')))
        started = time.monotonic()
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        db.upgrade(url)
        sends = "send" in args.only or "burst" in args.only
        key, send_key = asyncio.run(_seed(url, sends))
        print(f"bench: database {name} migrated and seeded in {time.monotonic() - started:.1f} s", flush=True)

        tmp = args.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wg-bench-")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WINDOW_GATE_")}  # sandbox mode
        env |= {"WINDOW_GATE_DATABASE_URL": url, "BENCH_REFERENCE_DSN": dsn}
        if args.workers > 1:  # what `serve` would do, in a directory that is removed afterwards
            env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "metrics")
            (tmp / "metrics").mkdir()
        bin_dir = Path(sys.executable).parent
        host = ["--host", "127.0.0.1", "--workers", str(args.workers)]
        gate = [str(bin_dir / "window-gate"), "serve", *host, "--no-migrate"]
        uvicorn = [str(bin_dir / "uvicorn"), "--app-dir", str(HERE.parent)]
        uvicorn += ["--log-level", "warning", "--no-access-log"]
        overrides = dict(setting.split("=", 1) for setting in args.set)
        service_env = env | overrides
        results: list[Result] = []
        rounds: dict[str, list[tuple[Result, Result]]] = {}
        bursts: dict[int, list[Result]] = {}  # connections → one result per round
        if "window" in args.only or "webhook" in args.only:
            with contextlib.ExitStack() as servers:
                service = servers.enter_context(_serving("service", gate, service_env, tmp))
                if "window" in args.only:
                    reference = servers.enter_context(
                        _serving("reference", [*uvicorn, "bench.reference:app", *host], env, tmp)
                    )
                    window = {
                        "BENCH_MODE": "window",
                        "BENCH_PN": PN,
                        "BENCH_KEY": key,
                        "BENCH_CUSTOMERS": str(WINDOWS),
                    }
                    results += _paired("window check", reference, service, window, window, args, rounds)
                if "webhook" in args.only:
                    for per_body in (1, 100):
                        label = "1 message" if per_body == 1 else f"batches of {per_body} messages"
                        results.append(_scenario(f"webhook · {label}", service, {}, args, per_body))
        upstream_workers = ["--host", "127.0.0.1", "--workers", str(UPSTREAM_WORKERS)]
        common = {"BENCH_MODE": "send", "BENCH_CUSTOMERS": str(SENDS), "BENCH_FIRST": str(SEND_FIRST)}
        if "send" in args.only:
            with contextlib.ExitStack() as servers:
                upstream = servers.enter_context(
                    _serving("upstream", [*uvicorn, "bench.upstream:app", *upstream_workers], env, tmp)
                )
                args.upstream_pid = upstream.proc.pid
                service = servers.enter_context(
                    _serving("service-send", gate, _send_env(env, upstream) | overrides, tmp)
                )
                reference_env = env | {"BENCH_UPSTREAM_URL": upstream.url, "BENCH_PN": PN}
                reference = servers.enter_context(
                    _serving(
                        "reference-send", [*uvicorn, "bench.reference_send:app", *host], reference_env, tmp
                    )
                )
                results += _paired(
                    "send",
                    reference,
                    service,
                    common | {"BENCH_PATH": "/send", "BENCH_BODY": '{"to": "%s"}', "BENCH_KEY": ""},
                    common | {"BENCH_PATH": "/v1/messages", "BENCH_BODY": SEND_BODY, "BENCH_KEY": send_key},
                    args,
                    rounds,
                )
                args.upstream_pid = None
        if "burst" in args.only:
            with contextlib.ExitStack() as servers:
                slow = env | {"BENCH_UPSTREAM_DELAY_MS": str(args.upstream_delay_ms)}
                upstream = servers.enter_context(
                    _serving("upstream-slow", [*uvicorn, "bench.upstream:app", *upstream_workers], slow, tmp)
                )
                args.upstream_pid = upstream.proc.pid
                one = [*gate[:2], "--host", "127.0.0.1", "--workers", str(BURST_WORKERS), "--no-migrate"]
                burst_env = {
                    k: v for k, v in _send_env(env, upstream).items() if k != "PROMETHEUS_MULTIPROC_DIR"
                }
                service = servers.enter_context(_serving("service-burst", one, burst_env | overrides, tmp))
                load = common | {"BENCH_PATH": "/v1/messages", "BENCH_BODY": SEND_BODY, "BENCH_KEY": send_key}
                for _ in range(args.rounds):  # each round every level, so that a busy spell hits all alike
                    for n in args.burst:
                        label = f"burst · {n} concurrent"
                        bursts.setdefault(n, []).append(
                            _scenario(
                                label,
                                service,
                                load,
                                args,
                                connections=n,
                                timeout=BURST_WRK_TIMEOUT,
                                drain=True,
                            )
                        )
                args.upstream_pid = None
            for runs in bursts.values():  # the median round by CPU per send
                results.append(sorted(runs, key=lambda r: r.app_cpu_ms)[len(runs) // 2])
    _report(results, rounds, bursts, args)


def _send_env(env: dict[str, str], upstream: Server) -> dict[str, str]:
    """Out of sandbox mode, sending to the stand-in (the settings given with --set still win)."""
    return env | {
        "WINDOW_GATE_GRAPH_BASE_URL": upstream.url,
        "WINDOW_GATE_SANDBOX": "false",
        "WINDOW_GATE_GRAPH_ACCESS_TOKEN": "bench",
        "WINDOW_GATE_APP_SECRET": "bench-app-secret",
        "WINDOW_GATE_VERIFY_TOKEN": "bench-verify-token",
    }


@contextlib.contextmanager
def _serving(name: str, cmd: list[str], env: dict[str, str], tmp: Path) -> Iterator[Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=out, stderr=out, start_new_session=True
        )
    server = Server(name, proc, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{server.url}/healthz", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers: the reference has no /healthz
            except OSError:
                time.sleep(0.2)
        yield server
    finally:
        # The server leads its own session: its group is exactly the supervisor and its workers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _paired(
    label: str,
    reference: Server,
    service: Server,
    reference_env: dict[str, str],
    service_env: dict[str, str],
    args: argparse.Namespace,
    rounds: dict[str, list[tuple[Result, Result]]],
) -> list[Result]:
    """Paired rounds, reference then service (another load on the machine hits both alike); returns the
    median round's pair, by the service's req/s over the reference's."""
    pairs = [
        (
            _scenario(f"{label} · reference", reference, reference_env, args),
            _scenario(f"{label} · service", service, service_env, args),
        )
        for _ in range(args.rounds)
    ]
    rounds[label] = pairs
    return list(sorted(pairs, key=lambda pair: pair[1].rps / pair[0].rps)[len(pairs) // 2])


def _scenario(
    name: str,
    server: Server,
    env: dict[str, str],
    args: argparse.Namespace,
    per_body: int = 0,
    connections: int | None = None,
    timeout: str = "5s",
    drain: bool = False,
) -> Result:
    """Warm up, then measure; again (at most ATTEMPTS times) while one worker took most of the load.

    `drain` (sends): measure from idle to idle, the requests still in flight when wrk stops included, and
    count the CPU per send the server accepted meanwhile (read back from the database): wrk's count would
    leave out a large burst's last requests but not their CPU."""

    def bodies(phase: str, seconds: int) -> dict[str, str]:
        if not per_body:
            return {}
        path = args.tmp / f"bodies-{per_body}-{phase}.txt"
        _write_bodies(path, POOL_RATE[per_body] * seconds, per_body)
        return {"BENCH_MODE": "bodies", "BENCH_BODIES": str(path)}

    busy = _quiet()
    note = f" (other processes busy: {busy:.2f} CPUs)" if busy > QUIET_CPUS else ""
    print(f"bench: {name}: {args.warmup} s warm-up, {args.duration} s load{note}", flush=True)
    load_shape = {"connections": connections or args.connections, "timeout": timeout}
    _wrk(server, env | bodies("warmup", args.warmup), args, args.warmup, **load_shape)
    best: Result | None = None
    for attempt in range(1, ATTEMPTS + 1):
        load = env | bodies("load", args.duration)
        if drain:
            _drained(server.proc.pid)  # the warm-up's last requests, still running, are not measured
            accepted = asyncio.run(_fetch(args.dsn, ACCEPTED))[0]
        before, sessions, _ = _settled(args.dsn)
        out, sampler = _wrk(server, load, args, args.duration, **load_shape, drain=drain)
        after, sessions_after, polls = _settled(args.dsn)  # also gives the backends time to report
        seconds = out["duration_us"] / 1e6
        sends = asyncio.run(_fetch(args.dsn, ACCEPTED))[0] - accepted if drain else None
        done = (out["requests"] if sends is None else sends) or float("nan")  # none: a drowned server
        result = Result(
            scenario=name,
            requests=out["requests"],
            seconds=round(seconds, 2),
            rps=out["requests"] / seconds,
            p50_ms=out["p50_us"] / 1000,
            p99_ms=out["p99_us"] / 1000,
            errors=sum(out["errors"].values()),
            wrapped=out["wrapped"],
            rss_mib=sampler.rss_mib,
            app_cpu_ms=1000 * sampler.cpu_seconds("app") / done,
            postgres_cpu_ms=1000 * sampler.cpu_seconds("postgres") / done,
            foreign_cpus=round(sampler.foreign_cpus(), 2),
            connections_opened=sessions_after - sessions - polls,
            balance=round(sampler.balance(), 2),
            upstream_cpu_ms=1000 * sampler.cpu_seconds("upstream") / done,
            attempt=attempt,
            sends=sends,
        )
        if per_body:
            result.messages_per_s = (out["requests"] - out["errors"]["status"]) * per_body / seconds
            result.recorded_per_s = (after - before) / seconds
        if best is None or result.balance >= best.balance:
            best = result
        if result.balance >= MIN_BALANCE:
            break
        print(f"bench: {name}: one worker took most connections (balance {result.balance:.2f})", flush=True)
    assert best is not None
    return best


def _wrk(
    server: Server,
    env: dict[str, str],
    args: argparse.Namespace,
    seconds: int,
    connections: int,
    timeout: str,
    drain: bool = False,
) -> tuple[dict[str, Any], "Sampler"]:
    """One wrk run, sampling the server's processes until it ends (`drain`: until they are idle again)."""
    cmd = ["wrk", f"-t{args.threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", timeout]
    cmd += ["-s", str(HERE / "load.lua"), server.url]
    proc = subprocess.Popen(
        cmd, env=os.environ | env | {"BENCH_THREADS": str(args.threads)}, stdout=subprocess.PIPE, text=True
    )
    sampler = Sampler(server.proc.pid, proc.pid, args.database, getattr(args, "upstream_pid", None))
    deadline = time.monotonic() + seconds + 60  # wrk loads its body pool first
    try:
        while True:
            sampler.sample()
            try:
                stdout, _ = proc.communicate(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise
    finally:  # wrk must not outlive a failed or interrupted run
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{stdout}")
    if drain:
        _drained(server.proc.pid, sampler)
    line = next(x for x in stdout.splitlines() if x.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON ")), sampler


class Sampler:
    """Reads /proc: the RSS of each uvicorn worker (the server's children, or the server itself with one
    worker), and the CPU time of the server, of its PostgreSQL backends, of wrk, and of other processes
    (another load on the machine makes the figures pessimistic)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, server: int, wrk: int, database: str, upstream: int | None = None) -> None:
        self.server, self.wrk, self.database, self.upstream = server, wrk, database.encode(), upstream
        self.rss_mib: dict[int, float] = {}
        self.kind: dict[
            int, str
        ] = {}  # pid → app | postgres | upstream | wrk | other | shared (kernel, PG's)
        self.workers: set[int] = set()
        self.ticks: dict[int, tuple[int, int]] = {}  # pid → CPU ticks (at the start, last seen)
        self.started = 0.0

    def sample(self) -> None:
        first = not self.started
        self.started = self.started or time.monotonic()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError):
                pid, text = int(stat.parent.name), stat.read_text()
                fields = text.rsplit(")", 1)[1].split()
                if pid not in self.kind:
                    self.kind[pid] = self._kind(pid, text[text.index("(") + 1 : text.rindex(")")], fields)
                ticks = int(fields[11]) + int(fields[12])  # utime + stime
                # A process born during the run counts from zero: short-lived backends add up.
                self.ticks[pid] = (self.ticks[pid][0] if pid in self.ticks else ticks if first else 0, ticks)
        for pid in self.workers or {self.server}:
            self.rss_mib[pid] = max(self.rss_mib.get(pid, 0.0), _rss_mib(pid))

    def _kind(self, pid: int, comm: str, fields: list[str]) -> str:
        ppid, group = int(fields[1]), int(fields[2])
        if ppid == self.server and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
            self.workers.add(pid)
        if pid == self.wrk:
            return "wrk"
        if self.server in (pid, group):  # its process group: supervisor and workers
            return "app"
        if self.upstream is not None and self.upstream in (pid, group):  # the Graph API stand-in
            return "upstream"
        if comm == "postgres":
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if self.database in cmdline:
                return "postgres"
            return "other" if b"(" in cmdline or b"[local]" in cmdline else "shared"  # a client's backend?
        return "shared" if 2 in (pid, ppid) else "other"

    def cpu_seconds(self, kind: str) -> float:
        ticks = sum(last - first for pid, (first, last) in self.ticks.items() if self.kind[pid] == kind)
        return ticks / self.TICK

    def balance(self) -> float:
        cpu = [last - first for pid, (first, last) in self.ticks.items() if pid in self.workers]
        return min(cpu) / max(cpu) if len(cpu) > 1 and max(cpu) else 1.0

    def foreign_cpus(self) -> float:
        """CPUs' worth of work done meanwhile by other processes (not the kernel's or PostgreSQL's own)."""
        return self.cpu_seconds("other") / (time.monotonic() - self.started)


def _drained(server: int, sampler: "Sampler | None" = None, patience: float = 120) -> None:
    """Wait, at most `patience` seconds, until the server's processes are idle (its requests answered),
    sampling meanwhile."""
    deadline = time.monotonic() + patience

    def ticks() -> int:
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if server in (int(stat.parent.name), int(fields[2])):  # the server's process group
                    total += int(fields[11]) + int(fields[12])
        return total

    last = ticks()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if sampler is not None:
            sampler.sample()
        previous, last = last, ticks()
        if last - previous <= IDLE_TICKS:
            return


def _quiet(patience: float = 30) -> float:
    """Wait, at most `patience` seconds, for the machine to idle; returns the CPUs busy last second."""
    deadline = time.monotonic() + patience
    while True:
        before = _busy_ticks()
        time.sleep(1)
        busy = (_busy_ticks() - before) / Sampler.TICK
        if busy <= QUIET_CPUS or time.monotonic() > deadline:
            return busy


def _busy_ticks() -> int:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split(maxsplit=9)[1:9]
    )
    return user + nice + system + irq + softirq + steal


def _rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _write_bodies(path: Path, count: int, per_body: int) -> None:
    """Signed deliveries, one per line as "<X-Hub-Signature-256>\\t<body>", every message id new."""
    series = next(_SERIES)  # so that message ids and new customers never repeat across files
    rng = random.Random(series)
    now = int(time.time())
    with path.open("wb") as f:
        for i in range(count):
            messages = []
            for j in range(per_body):
                n = i * per_body + j
                new = rng.random() < NEW_CUSTOMER_SHARE
                wa_id = f"1666{series:02d}{n:07d}" if new else f"1555{rng.randint(1, WINDOWS):07d}"
                messages.append(
                    inbound(wa_id, ts=now - rng.randint(0, 600), message_id=f"wamid.b{series}.{n}")
                )
            body, headers = signed(delivery(messages))
            f.write(headers["X-Hub-Signature-256"].encode() + b"\t" + body + b"\n")


def _settled(dsn: str) -> tuple[int, int, int]:
    """Inbound messages stored, once the requests still in flight when wrk stopped have landed; the
    sessions PostgreSQL has counted on this database; the sessions this took (each poll connects)."""
    count, polls, deadline = -1, 0, time.monotonic() + 10
    while True:
        previous, (count, sessions) = count, asyncio.run(_fetch(dsn, SETTLED))
        polls += 1
        if count == previous or time.monotonic() > deadline:
            return count, sessions, polls
        time.sleep(0.5)


async def _seed(url: str, sends: bool) -> tuple[str, str]:
    """100,000 customers, each with its alias and a window on PN (and, for sends, 10,000 more whose window
    was opened just now, a month of earlier sends, and the reference's table); returns a read API key and a
    send one."""
    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            for statement in SEED + (SEED_SEND if sends else ()):
                await conn.execute(text(statement))
            read = await api_keys.create(conn, "bench", Role.READ)
            send = await api_keys.create(conn, "bench-send", Role.SEND)
            for statement in SEED_HISTORY if sends else ():
                await conn.execute(text(statement))
            return read, send
    finally:
        await engine.dispose()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch(dsn: str, sql: str) -> tuple[int, ...]:
    conn = await asyncpg.connect(dsn)
    try:
        return tuple(await conn.fetchrow(sql))
    finally:
        await conn.close()


def _report(
    results: list[Result],
    rounds: dict[str, list[tuple[Result, Result]]],
    bursts: dict[int, list[Result]],
    args: argparse.Namespace,
) -> None:
    by_name = {r.scenario: r for r in results}
    pairs = {  # label → (reference, service) of the median round
        label: (by_name[f"{label} · reference"], by_name[f"{label} · service"]) for label in rounds
    }
    ours = [r for r in results if not r.scenario.endswith("· reference")]
    rss = max((max(r.rss_mib.values(), default=0.0) for r in ours), default=0.0)

    def clean(*rs: Result) -> bool:
        return all(r.errors == 0 and r.wrapped == 0 for r in rs)

    targets = []
    vs: dict[int, str] = {}
    for label, (ref, svc) in pairs.items():
        ratio_rps, ratio_p99 = svc.rps / ref.rps, svc.p99_ms / ref.p99_ms
        vs |= {id(ref): "(reference)", id(svc): f"{ratio_rps:.0%} req/s · {ratio_p99:.2f}× p99"}
        targets += [
            (f"{label} req/s ≥ {TARGETS['ratio_rps']:.0%} of the reference's",
             f"{ratio_rps:.0%} ({svc.rps:,.0f} vs {ref.rps:,.0f})",
             ratio_rps >= TARGETS["ratio_rps"] and clean(ref, svc)),
            (f"{label} p99 ≤ {TARGETS['ratio_p99']:g}× the reference's",
             f"{ratio_p99:.2f}× ({svc.p99_ms:.1f} vs {ref.p99_ms:.1f} ms)",
             ratio_p99 <= TARGETS["ratio_p99"] and clean(ref, svc)),
        ]  # fmt: skip
    if "webhook" in args.only:
        single, batch = by_name["webhook · 1 message"], by_name["webhook · batches of 100 messages"]
        single_rate, batch_rate = single.messages_per_s or 0, batch.messages_per_s or 0
        targets += [
            (f"webhook single-message deliveries/s ≥ {TARGETS['single_per_s']:,}", f"{single_rate:,.0f}",
             single_rate >= TARGETS["single_per_s"] and clean(single)),
            (f"webhook messages/s in batches of 100 ≥ {TARGETS['batch_messages_per_s']:,}", f"{batch_rate:,.0f}",
             batch_rate >= TARGETS["batch_messages_per_s"] and clean(batch)),
        ]  # fmt: skip
    if bursts and len(args.burst) > 1:
        small, large = (by_name[f"burst · {n} concurrent"] for n in (args.burst[0], args.burst[-1]))
        ratio = large.app_cpu_ms / small.app_cpu_ms
        targets.append(
            (f"burst gate CPU per send at {args.burst[-1]} concurrent ≤ {TARGETS['burst_cpu_ratio']:g}× at {args.burst[0]}",
             f"{ratio:.2f}× ({large.app_cpu_ms:.2f} vs {small.app_cpu_ms:.2f} ms)",
             ratio <= TARGETS["burst_cpu_ratio"] and clean(*bursts[args.burst[0]], *bursts[args.burst[-1]])),
        )  # fmt: skip
    targets.append(
        (f"RSS ≤ {RSS_LIMIT_MIB} MiB per worker under load", f"{rss:.0f} MiB", rss <= RSS_LIMIT_MIB)
    )
    lines = [
        f"\n{_revision()} · {args.workers} workers each · wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(+{args.warmup} s warm-up) · {WINDOWS:,} seeded windows · {os.cpu_count()} CPUs · {', '.join(args.only)}\n",
        "| scenario | req/s | p50 ms | p99 ms | messages/s (stored/s) | vs reference "
        "| CPU ms/req app + PG (+ upstream) | PG conns opened | worker balance | RSS max/worker MiB | errors "
        "| other CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        msgs = "" if r.messages_per_s is None else f"{r.messages_per_s:,.0f} ({r.recorded_per_s:,.0f})"
        errors = f"{r.errors}" + (f" (body pool reused {r.wrapped}×)" if r.wrapped else "")
        upstream = f" (+ {r.upstream_cpu_ms:.2f})" if r.upstream_cpu_ms else ""
        lines.append(
            f"| {r.scenario} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {msgs} | {vs.get(id(r), '')} "
            f"| {r.app_cpu_ms:.2f} + {r.postgres_cpu_ms:.2f}{upstream} | {r.connections_opened} | {r.balance:.2f} "
            f"| {max(r.rss_mib.values(), default=0):.0f} | {errors} | {r.foreign_cpus:.2f} |"
        )
    if bursts:
        lines.append(
            f"\nburst: {BURST_WORKERS} worker, upstream answering after {args.upstream_delay_ms} ms, "
            f"{args.rounds} rounds of {', '.join(map(str, args.burst))} concurrent sends (wrk connections); "
            "the median round by CPU per send is shown. App CPU ms per send (sends accepted) in each round: "
            + "; ".join(
                f"{n}: " + ", ".join(f"{r.app_cpu_ms:.2f} ({r.sends})" for r in runs)
                for n, runs in bursts.items()
            )
        )
    for label, pairs_of_label in rounds.items():
        per_round = ", ".join(
            f"{b.rps / a.rps:.0%} ({b.p99_ms / a.p99_ms:.1f}× p99)" for a, b in pairs_of_label
        )
        lines.append(
            f"\n{label}, service vs reference in each round: {per_round}; the median round is shown."
        )
    lines += ["", "| target | measured | verdict |", "|---|--:|---|"]
    lines += [f"| {t} | {m} | {'PASS' if ok else 'FAIL'} |" for t, m, ok in targets]
    lines.append(
        "\nstored/s: inbound messages written to the database per second. CPU ms/req: CPU time of the "
        "server's processes and of its PostgreSQL backends per request (robust to a busy machine). "
        "PG conns opened: new database sessions during the load (pool churn). worker balance: CPU of "
        f"the least busy worker over the busiest's (runs under {MIN_BALANCE} are repeated, {ATTEMPTS} at most). "
        "upstream: CPU of the Graph API stand-in per send (not counted as app). other CPU: CPUs' worth "
        "of work by processes outside the benchmark meanwhile (> 0.2 makes req/s and latency pessimistic)."
    )
    print("\n".join(lines))

    out = HERE / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    report = {
        "config": vars(args) | {"windows": WINDOWS, "cpus": os.cpu_count(), "revision": _revision()},
        "results": [asdict(r) for r in results],
        "rounds": {label: [[asdict(r) for r in pair] for pair in pairs] for label, pairs in rounds.items()},
        "bursts": {n: [asdict(r) for r in runs] for n, runs in bursts.items()},
        "targets": [{"target": t, "measured": m, "pass": ok} for t, m, ok in targets],
    }
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nbench: results in {out.relative_to(HERE.parent)}")


def _revision() -> str:
    """The commit measured, "+changes" when the working tree differs from it."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", *argv], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "../src", "../migrations")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+changes" if changed else "")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; servers stopped and database dropped")
