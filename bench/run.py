"""Load benchmark: window checks, webhook ingest and gated sends over real sockets, beside bare-stack
references.

    ./dev run python -m bench.run [--workers 2] [--duration 12] [--rounds 3] [--set NAME=VALUE]
                                  [--only window,webhook,webhook-relay,send,burst] [--ingest-workers 1,2]
                                  [--burst 50,500] [--upstream-delay-ms 300] [--relay-jobs worker]
                                  [--worker-nice 0]

Creates a scratch database on the local PostgreSQL, migrates it, seeds 100,000 windows (for sends also
10,000 open ones and a month of earlier sends, in the service's tables and the reference's; for statuses
200,000 of the gate's own sends of the last three days, accepted by Meta), starts `window-gate serve` and
bench/reference.py (same uvicorn, same worker count) on free ports and drives them with wrk
(bench/load.lua), in paired rounds (reference, then service; the median round counts):
- window: window checks, at --workers;
- webhook (or some of webhook-known, webhook-new, webhook-status): signed deliveries to
  POST /webhooks/whatsapp, pre-signed into files, of 1 and of 100 events each, with the service and the
  reference at each of --ingest-workers: `known`, messages from random seeded customers; `new`, each
  message from a customer never seen before (half of them with a BSUID beside the wa_id, paired in
  `contacts`: the linking path); `status`, Meta's sent, delivered and read for the gate's own sends,
  found by biz_opaque_callback_data. Message ids and new customers never repeat; each own send has its
  statuses once (all of them had theirs: they go back to accepted, between loads). Counted: events
  acknowledged per second, and those stored (inbound_messages or message_events rows, read back from the
  database); a scenario storing far fewer than it acknowledged is flagged and fails;
- webhook-relay: the known customers' single-message deliveries, the same service in paired rounds
  without subscriptions and with 3 `meta.webhook` subscriptions for every number, made through the API and
  pointed at bench/receiver.py (a raw ASGI app in its own uvicorn process, answering 200 at once); after
  each loaded round the outbox must drain (every relay delivery `delivered`) and the receiver must have had
  every delivery kept since the subscriptions were made, once per subscription, correctly signed. Where the
  relay runs (`--relay-jobs`, both rounds alike): `worker` (the production layout: serve with
  JOBS_IN_SERVE=false beside one `window-gate worker`), `serve` (the jobs engine inside
  the serve worker) or `after` (no jobs during the load; a worker started once it ends: what the outbox
  write alone costs ingest). Reported: the drain's duration and the relay's CPU (serve's and the worker's)
  per delivery, the receiver's CPU (as upstream); bench/relay.py measures the dispatcher alone;
- send: free-form sends (POST /v1/messages, text, to seeded customers whose window is open; no
  Idempotency-Key) against bench/reference_send.py, both sending to bench/upstream.py (a minimal Graph API
  stand-in in its own uvicorn process) with the service out of sandbox mode;
- burst: the same sends, one worker, an upstream that answers after 300 ms, 50 and then 500 connections
  in each round, for the gate's CPU time per send at each (it must not grow with the crowd).
Meanwhile it reads /proc for each worker's RSS and for the CPU time of the server, of its PostgreSQL
backends and of any other process (the machine may be shared). Prints a markdown table with a verdict per
target (webhook ones judged at one worker), writes bench/results/<time>.json, stops the servers and drops
the database. Needs wrk (`apt-get install -y wrk`).
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
from uuid import UUID

import asyncpg
from sqlalchemy import text

from bench.receiver import counts as receiver_counts
from tests.factories import PN, delivery, inbound, sent_status, signed
from window_gate import db
from window_gate.apikey import service as api_keys
from window_gate.apikey.rules import Role
from window_gate.config import SANDBOX_APP_SECRET
from window_gate.message.service import OPAQUE_PREFIX

HERE = Path(__file__).resolve().parent
WINDOWS = 100_000
# Webhook ingest: known customers, a new customer per message, statuses of the gate's own sends; each
# at 1 and at 100 events per delivery.
INGEST = ("known", "new", "status")
PER_BODY = (1, 100)
BSUID_SHARE = 0.5  # new customers whose delivery carries a BSUID too: the wa_id ↔ BSUID linking path
# Pre-signed deliveries per second of load; a run faster than this reuses bodies and says so ("wrapped").
POOL_RATE = {1: 5_000, 100: 500}
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
    "INSERT INTO message_events (phone_number_id, message_id, status, at) "
    "SELECT phone_number_id, id, status, created_at FROM messages",
    "INSERT INTO bench_sends SELECT id, recipient_input, status, graph_message_id FROM messages",  # the same
    "ANALYZE",
)
# The gate's own sends that status webhooks are about, as a send leaves them once Meta accepted it (its
# pending and accepted events included), recorded over the last three days to seeded customers.
OWN_SENDS = 200_000
SEED_OWN = (
    "INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, recipient_wa_id, type, "
    'body, "window", status, graph_message_id, response_status, response, pricing_category, market, billable, '
    "estimated_amount, currency, inside_csw, inside_fep, created_at, updated_at) "
    "SELECT gen_random_uuid(), (SELECT id FROM api_keys WHERE name = 'bench-send'), "
    f"encode(sha256(i::text::bytea), 'hex'), '{PN}', w, w, 'text', "
    "jsonb_build_object('messaging_product', 'whatsapp', 'to', w, 'type', 'text', "
    "  'text', jsonb_build_object('body', 'Your order has shipped')), "
    f"jsonb_build_object('phone_number_id', '{PN}', 'customer', jsonb_build_object('input', w, 'wa_id', w), "
    "  'state', 'open', 'can_send_free_form', true, 'last_inbound_at', t - interval '1 hour', "
    "  'expires_at', t + interval '23 hours'), "
    "'accepted', 'wamid.own.' || i, 200, "
    "jsonb_build_object('messaging_product', 'whatsapp', "
    "  'contacts', jsonb_build_array(jsonb_build_object('input', w, 'wa_id', w)), "
    "  'messages', jsonb_build_array(jsonb_build_object('id', 'wamid.own.' || i))), "
    "'service', 'North America', false, 0, 'USD', true, false, t, t "
    f"FROM generate_series(1, {OWN_SENDS}) i, LATERAL (SELECT '1555' || lpad((1 + i * 7919 % {WINDOWS})::text, 7, '0') AS w, "
    "now() - random() * interval '3 days' AS t) x",
    "INSERT INTO message_events (phone_number_id, message_id, status, at) "
    "SELECT phone_number_id, id, e.status, created_at + e.after FROM messages, "
    "(VALUES ('pending', interval '0'), ('accepted', interval '150 ms')) e(status, after) "
    "WHERE graph_message_id LIKE 'wamid.own.%'",
    "ANALYZE",
)
OWN = "SELECT id, graph_message_id, recipient_wa_id FROM messages WHERE graph_message_id LIKE 'wamid.own.%'"
# Every own send has had its statuses: back to accepted, so that the next statuses move them forward again.
# Rows locked in id order, as the service's ingest locks them: the warm-up's last statuses may still be
# landing (in any other order the two deadlock).
RESET_OWN = (
    "UPDATE messages SET status = 'accepted', pricing = NULL, updated_at = created_at WHERE id IN ("
    "SELECT id FROM messages WHERE graph_message_id LIKE 'wamid.own.%' AND status <> 'accepted' "
    "ORDER BY id FOR UPDATE)"
)
OWN_BY_STATUS = (
    "SELECT string_agg(status || ' ' || n, ', ' ORDER BY n DESC) FROM "
    "(SELECT status, count(*) AS n FROM messages WHERE graph_message_id LIKE 'wamid.own.%' GROUP BY status) s"
)
# In a status delivery file each message has its sent, then delivered, then read, this many deliveries
# apart: Meta's come seconds apart, not in flight together (twice wrk's default connections), and even a
# slow run gets to all three.
STATUS_BLOCK = 64
STATUS_AFTER = {"sent": 0, "delivered": 2, "read": 40}  # seconds after the send
SEND_BODY = (
    f'{{"phone_number_id": "{PN}", "messaging_product": "whatsapp", "to": "%s", "type": "text", '
    '"text": {"body": "Your order has shipped"}}'
)
UPSTREAM_WORKERS = 1
WEBHOOK = tuple(f"webhook-{kind}" for kind in INGEST)  # `--only webhook` runs them all
RELAY = "webhook-relay"
SCENARIOS = ("window", *WEBHOOK, RELAY, "send", "burst")
RELAY_SUBSCRIBERS = 3
RELAY_JOBS = ("worker", "serve", "after")
RELAY_DRAIN_PATIENCE = 600  # seconds the outbox may take to drain after a load before the round fails
UNDELIVERED = (  # each Meta delivery not fanned out yet counts once per subscription (all want every one)
    "SELECT (SELECT count(*) FROM relay_deliveries WHERE state <> 'delivered') "
    "+ (SELECT count(*) FROM relay_fanout) * (SELECT count(*) FROM subscriptions)"
)
RELAY_ROWS = (
    "SELECT s.url, count(r.id), count(r.id) FILTER (WHERE r.state = 'delivered') "
    "FROM subscriptions s LEFT JOIN relay_deliveries r ON r.subscription_id = s.id GROUP BY s.url"
)
TARGETS = {
    "ratio_rps": 0.60,
    "ratio_p99": 2.0,
    # webhook ingest, one worker, single-event deliveries unless said
    "new_vs_reference": 0.8,  # new customers' deliveries/s over the reference's
    "known_vs_reference": 2.0,  # known customers' deliveries/s over the reference's
    "status_per_s": 3_000,
    "status_batch_per_s": 15_000,  # statuses/s in batches of 100
    "burst_cpu_ratio": 1.5,  # gate CPU per send at the largest burst over that at the smallest
    "relay_vs_without": 0.8,  # ingest deliveries/s with RELAY_SUBSCRIBERS subscriptions over without
}
BURST_WORKERS = 1  # one process: its CPU time per send is the figure, undiluted by uvicorn's accept balance
BURST_WRK_TIMEOUT = "30s"  # a slow burst must finish its requests, not turn them into wrk timeouts
RSS_LIMIT_MIB = 200
STORED_SHARE = 0.9  # a webhook scenario that stores fewer of the events it acknowledged is flagged, and fails
# Events stored: customer messages and status events (a scenario delivers one kind).
SETTLED = (
    "SELECT (SELECT count(*) FROM inbound_messages) + (SELECT count(*) FROM message_events), sessions "
    "FROM pg_stat_database WHERE datname = current_database()"
)
ACCEPTED = "SELECT count(*) FROM messages WHERE status = 'accepted'"
APP_SECRET = "bench-app-secret"  # the gate's out of sandbox mode (_send_env): webhooks are signed with it
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
    messages_per_s: float | None = None  # webhook events (messages or statuses) acknowledged per second
    recorded_per_s: float | None = None  # and stored: inbound_messages or message_events rows, from the DB
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
    ended: float = 0.0  # time.monotonic() when the load stopped
    # webhook-relay, with subscriptions: what the subscribers got once the outbox drained after the load
    relay_expected: int | None = None  # deliveries kept since the subscriptions were made × subscriptions
    relayed: int | None = None  # of those, the distinct events the receiver got, every subscription's
    relay_repeats: int = 0  # events received more than once (at least once: a lease that ran out)
    bad_signatures: int = 0  # X-Hub-Signature-256 not the HMAC of the bytes under the subscription's secret
    undelivered: int = 0  # outbox rows not `delivered` when the drain ended (0 unless it timed out)
    backlog: int | None = None  # outbox rows not yet delivered at the drain's start (the load just ended)
    drain_s: float | None = None  # from the load's end until every outbox row was delivered
    drain_app_cpu_ms: float = 0.0  # app CPU time (serve's and the worker's) per backlog row during the drain
    worker_cpu_ms: float = 0.0  # CPU time per request of the `window-gate worker` beside the server, if any


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
        help=f"comma-separated scenarios to run, of {', '.join(SCENARIOS)}; webhook: all three webhook-… "
        "(default: all)",
    )
    parser.add_argument(
        "--ingest-workers",
        default="1,2",
        help="webhook: comma-separated worker counts of the service and the reference (targets: at 1)",
    )
    parser.add_argument(
        "--per-body",
        default=",".join(map(str, PER_BODY)),
        help="webhook: comma-separated events per delivery (default: both)",
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
        "--relay-jobs",
        choices=RELAY_JOBS,
        default="worker",
        help="webhook-relay: where the relay runs: a `window-gate worker` beside serve (JOBS_IN_SERVE=false), "
        "the serve worker itself, or a worker started after the load (the outbox write alone)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="webhook-relay: the worker's niceness (`nice -n`): 19 lets serve have the CPU first, as the "
        "README's layout for a worker beside serve on one machine says",
    )
    database_and_settings(
        parser,
        "a setting for the service only, e.g. WINDOW_GATE_DB_POOL_SIZE=20 (default: none, sandbox mode)",
    )
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    only |= set(WEBHOOK) if "webhook" in only else set()
    if not only or only - {*SCENARIOS, "webhook"}:
        parser.error(f"--only takes some of webhook, {', '.join(SCENARIOS)}")
    args.only = [name for name in SCENARIOS if name in only]
    try:
        args.ingest_workers = sorted({int(n) for n in args.ingest_workers.split(",") if n.strip()})
    except ValueError:
        args.ingest_workers = []
    if not args.ingest_workers or min(args.ingest_workers) < 1:
        parser.error("--ingest-workers takes comma-separated worker counts, e.g. 1,2")
    args.per_body = [n for n in PER_BODY if str(n) in args.per_body.split(",")]
    if not args.per_body:
        parser.error(f"--per-body takes some of {', '.join(map(str, PER_BODY))}")
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
        key, send_key, args.admin_key = asyncio.run(_seed(url, sends, "webhook-status" in args.only))
        args.own = OwnSends(dsn) if "webhook-status" in args.only else None
        print(f"bench: database {name} migrated and seeded in {time.monotonic() - started:.1f} s", flush=True)

        tmp = args.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wg-bench-")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WINDOW_GATE_")}  # sandbox mode
        env |= {
            "WINDOW_GATE_DATABASE_URL": url,
            "BENCH_REFERENCE_DSN": dsn,
            "BENCH_APP_SECRET": SANDBOX_APP_SECRET,
        }
        (tmp / "metrics").mkdir()
        env = _metrics_env(env, tmp, args.workers)
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
        if "window" in args.only:
            with contextlib.ExitStack() as servers:
                service = servers.enter_context(_serving("service", gate, service_env, tmp))
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
        ingest = [name.removeprefix("webhook-") for name in args.only if name in WEBHOOK]
        for n in args.ingest_workers if ingest else ():
            workers = ["--host", "127.0.0.1", "--workers", str(n)]
            ingest_env = _metrics_env(env, tmp, n)
            reference_cmd = (f"reference-{n}", [*uvicorn, "bench.reference:app", *workers], ingest_env)
            service_cmd = (f"service-{n}", [*gate[:2], *workers, "--no-migrate"], ingest_env | overrides)
            for kind in ingest:
                for per_body in args.per_body:
                    label = _ingest_label(kind, per_body, n)
                    results += _paired_alone(label, reference_cmd, service_cmd, args, rounds, per_body, kind)
        if "webhook-status" in args.only:
            args.own_by_status = asyncio.run(_fetch(dsn, OWN_BY_STATUS))[0]
        receiver_cmd = [*uvicorn, "bench.receiver:app", "--host", "127.0.0.1", "--workers", "1"]
        for n in args.ingest_workers if RELAY in args.only else ():
            workers = ["--host", "127.0.0.1", "--workers", str(n)]
            jobs_apart = {} if args.relay_jobs == "serve" else {"WINDOW_GATE_JOBS_IN_SERVE": "false"}
            service_env = _metrics_env(env, tmp, n) | jobs_apart | overrides
            service_cmd = (f"service-{n}", [*gate[:2], *workers, "--no-migrate"], service_env)
            nice = ["nice", "-n", str(args.worker_nice)] if args.worker_nice else []
            worker_cmd = [*nice, str(bin_dir / "window-gate"), "worker"]
            label = _ingest_label("relay", 1, n)
            results += _paired_relay(label, service_cmd, (receiver_cmd, env), worker_cmd, args, rounds)
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


def _metrics_env(env: dict[str, str], tmp: Path, workers: int) -> dict[str, str]:
    """Several workers share a directory for their metrics (what `serve` would do, in one that is removed
    afterwards); one keeps them in memory."""
    env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return env | {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")} if workers > 1 else env


def _ingest_label(kind: str, per_body: int, workers: int) -> str:
    return f"webhook {kind} · {per_body}/delivery · {workers} worker{'s' if workers > 1 else ''}"


def _send_env(env: dict[str, str], upstream: Server) -> dict[str, str]:
    """Out of sandbox mode, sending to the stand-in (the settings given with --set still win)."""
    return env | {
        "WINDOW_GATE_GRAPH_BASE_URL": upstream.url,
        "WINDOW_GATE_SANDBOX": "false",
        "WINDOW_GATE_GRAPH_ACCESS_TOKEN": "bench",
        "WINDOW_GATE_APP_SECRET": APP_SECRET,
        "WINDOW_GATE_VERIFY_TOKEN": "bench-verify-token",
    }


def database_and_settings(parser: argparse.ArgumentParser, settings_help: str) -> None:
    """The options every bench takes: where to make its database, and settings for the gate."""
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("WINDOW_GATE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL database to connect to for CREATE/DROP DATABASE",
    )
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=settings_help)


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
    return _median(label, pairs, rounds)


def _paired_alone(
    label: str,
    reference: tuple[str, list[str], dict[str, str]],
    service: tuple[str, list[str], dict[str, str]],
    args: argparse.Namespace,
    rounds: dict[str, list[tuple[Result, Result]]],
    per_body: int,
    kind: str,
) -> list[Result]:
    """Paired rounds like _paired, each server (name, command, environment) started for its own load and
    stopped after it: loaded with ingest at two workers, the service's pools and the reference's together
    would hold more connections than PostgreSQL's 100, which other users share."""
    pairs = []
    for _ in range(args.rounds):
        pair = []
        for (name, cmd, env), side in ((reference, "reference"), (service, "service")):
            with _serving(name, cmd, env, args.tmp) as server:
                pair.append(_scenario(f"{label} · {side}", server, {}, args, per_body, kind))
        pairs.append((pair[0], pair[1]))
    return _median(label, pairs, rounds)


def _paired_relay(
    label: str,
    service: tuple[str, list[str], dict[str, str]],
    receiver: tuple[list[str], dict[str, str]],
    worker: list[str],
    args: argparse.Namespace,
    rounds: dict[str, list[tuple[Result, Result]]],
) -> list[Result]:
    """Paired rounds of the known customers' single-message deliveries, the same service (name, command,
    environment) started for each: without subscriptions, then with RELAY_SUBSCRIBERS made through the
    API, pointed at a receiver (command, environment) started for the round. After the load the service
    (and the `worker` command, with the service's environment, as --relay-jobs says) runs on until the
    outbox has drained; then all stop and what the receiver got is checked."""
    name, cmd, env = service
    pairs = []
    args.worker_pid = None
    for i in range(args.rounds):
        asyncio.run(_admin(args.dsn, "DELETE FROM subscriptions"))  # their outbox rows go with them
        with contextlib.ExitStack() as servers:
            server = servers.enter_context(_serving(name, cmd, env, args.tmp))
            if args.relay_jobs == "worker":
                args.worker_pid = servers.enter_context(_working(worker, env, args.tmp)).pid
            try:
                without = _scenario(f"{label} · no subscriptions", server, {}, args, 1, "known")
            finally:
                args.worker_pid = None
        got = args.tmp / f"receiver-{name}-{i}"
        got.mkdir()
        # The service and the worker stop first, then the receiver, which writes its counts as it stops.
        with contextlib.ExitStack() as servers:
            listening = servers.enter_context(
                _serving("receiver", receiver[0], receiver[1] | {"BENCH_RECEIVER_DIR": str(got)}, args.tmp)
            )
            server = servers.enter_context(_serving(name, cmd, env, args.tmp))
            if args.relay_jobs == "worker":
                args.worker_pid = servers.enter_context(_working(worker, env, args.tmp)).pid
            first = asyncio.run(_fetch(args.dsn, "SELECT coalesce(max(id), 0) FROM webhook_deliveries"))[0]
            _subscribe(server, listening, args.admin_key, got)
            args.upstream_pid = listening.proc.pid  # its CPU is the "upstream" column
            try:
                relaying = _scenario(
                    f"{label} · {RELAY_SUBSCRIBERS} subscriptions", server, {}, args, 1, "known"
                )
                if args.relay_jobs == "after":
                    args.worker_pid = servers.enter_context(_working(worker, env, args.tmp)).pid
                _drain_relay(relaying, server, listening, args)
            finally:
                args.upstream_pid = args.worker_pid = None
        _check_relay(relaying, first, got, args)
        pairs.append((without, relaying))
    asyncio.run(_admin(args.dsn, "DELETE FROM subscriptions"))
    return _median(label, pairs, rounds)


@contextlib.contextmanager
def _working(cmd: list[str], env: dict[str, str], tmp: Path) -> Iterator["subprocess.Popen[bytes]"]:
    """A `window-gate worker` (it has no port: started once it says so), stopped like a server."""
    log = tmp / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"window_gate worker: up to" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _subscribe(service: Server, receiver: Server, admin_key: str, got: Path) -> None:
    """RELAY_SUBSCRIBERS `meta.webhook` subscriptions for every number, each to its own path of the
    receiver, whose secrets the receiver reads to check the signatures."""
    secrets_by_path = {}
    for n in range(RELAY_SUBSCRIBERS):
        path = f"/subscriber-{n}"
        request = urllib.request.Request(
            f"{service.url}/v1/subscriptions",
            data=json.dumps({"url": receiver.url + path, "events": ["meta.webhook"]}).encode(),
            headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            secrets_by_path[path] = json.load(answer)["secret"]
    (got / "secrets.json").write_text(json.dumps(secrets_by_path))


def _drain_relay(result: Result, service: Server, receiver: Server, args: argparse.Namespace) -> None:
    """Wait (RELAY_DRAIN_PATIENCE at most) until every outbox row is delivered, sampling the service's
    CPU meanwhile; records the drain on `result`."""
    sampler = Sampler(service.proc.pid, -1, args.database, receiver.proc.pid, args.worker_pid)
    sampler.sample()
    deadline = time.monotonic() + RELAY_DRAIN_PATIENCE
    backlog = left = asyncio.run(_fetch(args.dsn, UNDELIVERED))[0]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        sampler.sample()
        left = asyncio.run(_fetch(args.dsn, UNDELIVERED))[0]
    sampler.sample()
    result.backlog, result.undelivered = backlog, left
    result.drain_s = round(time.monotonic() - result.ended, 2)
    relay_cpu = sampler.cpu_seconds("app") + sampler.cpu_seconds("worker")
    result.drain_app_cpu_ms = 1000 * relay_cpu / backlog if backlog else 0.0
    print(
        f"bench: {result.scenario}: outbox drained in {result.drain_s:.1f} s after the load "
        f"({backlog:,} left then{f', {left:,} still not delivered' if left else ''})",
        flush=True,
    )


def _check_relay(result: Result, first: int, got: Path, args: argparse.Namespace) -> None:
    """Every delivery kept since the subscriptions were made, once per subscription: in the outbox,
    delivered, and at the receiver (distinct event ids, signed with the subscription's secret)."""
    kept = asyncio.run(_fetch(args.dsn, f"SELECT count(*) FROM webhook_deliveries WHERE id > {first}"))[0]
    rows = {
        url.rsplit("/", 1)[1]: (n, delivered)
        for url, n, delivered in asyncio.run(_fetch_all(args.dsn, RELAY_ROWS))
    }
    paths = receiver_counts(got)
    result.relay_expected = kept * RELAY_SUBSCRIBERS
    result.relayed = sum(min(c.distinct, kept) for c in paths.values())
    result.relay_repeats = sum(c.received - c.distinct for c in paths.values())
    result.bad_signatures = sum(c.bad_signatures + c.unsigned for c in paths.values())
    for path in sorted(rows.keys() | {p.lstrip("/") for p in paths}):
        n, delivered = rows.get(path, (0, 0))
        distinct = paths[f"/{path}"].distinct if f"/{path}" in paths else 0
        if not n == delivered == distinct == kept:
            print(
                f"bench: {result.scenario}: {path}: {n:,} outbox rows, {delivered:,} delivered, "
                f"{distinct:,} received, of {kept:,} deliveries kept",
                flush=True,
            )


def _relayed_all(r: Result) -> bool:
    return r.relayed == r.relay_expected and not r.undelivered and not r.bad_signatures


def _median(
    label: str, pairs: list[tuple[Result, Result]], rounds: dict[str, list[tuple[Result, Result]]]
) -> list[Result]:
    rounds[label] = pairs
    return list(_median_pair(pairs))


def _median_pair(pairs: list[tuple[Result, Result]]) -> tuple[Result, Result]:
    """The round whose second (the service) over first (the reference) is the median, by req/s."""
    return sorted(pairs, key=lambda pair: pair[1].rps / pair[0].rps)[len(pairs) // 2]


def _scenario(
    name: str,
    server: Server,
    env: dict[str, str],
    args: argparse.Namespace,
    per_body: int = 0,
    kind: str = "",
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
        path = args.tmp / f"bodies-{kind}-{per_body}-{phase}.txt"
        _write_bodies(path, POOL_RATE[per_body] * seconds, per_body, kind, args.own)
        return {"BENCH_MODE": "bodies", "BENCH_BODIES": str(path)}

    busy = _quiet()
    note = f" (other processes busy: {busy:.2f} CPUs)" if busy > QUIET_CPUS else ""
    print(f"bench: {name}: {args.warmup} s warm-up, {args.duration} s load{note}", flush=True)
    connections = connections or args.connections
    _wrk(server, env | bodies("warmup", args.warmup), args, args.warmup, connections, timeout)
    best: Result | None = None
    for attempt in range(1, ATTEMPTS + 1):
        load = env | bodies("load", args.duration)
        if drain:
            _drained(server.proc.pid)  # the warm-up's last requests, still running, are not measured
            accepted = asyncio.run(_fetch(args.dsn, ACCEPTED))[0]
        before, sessions, _ = _settled(args.dsn)
        out, sampler = _wrk(server, load, args, args.duration, connections, timeout, drain=drain)
        ended = time.monotonic()
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
            worker_cpu_ms=1000 * sampler.cpu_seconds("worker") / done,
            attempt=attempt,
            sends=sends,
            ended=ended,
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
    sampler = Sampler(
        server.proc.pid,
        proc.pid,
        args.database,
        getattr(args, "upstream_pid", None),
        getattr(args, "worker_pid", None),
    )
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
        log = (args.tmp / f"{server.name}.log").read_text()[-3000:]
        state = "running" if server.proc.poll() is None else f"exited {server.proc.returncode}"
        raise RuntimeError(
            f"wrk failed ({proc.returncode}):\n{stdout}\n{server.name} ({state}) logged:\n{log}"
        )
    if drain:
        _drained(server.proc.pid, sampler)
    line = next(x for x in stdout.splitlines() if x.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON ")), sampler


class Sampler:
    """Reads /proc: the RSS of each uvicorn worker (the server's children, or the server itself with one
    worker), and the CPU time of the server, of its PostgreSQL backends, of wrk, of a `window-gate worker`
    beside it, and of other processes (another load on the machine makes the figures pessimistic)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(
        self, server: int, wrk: int, database: str, upstream: int | None = None, worker: int | None = None
    ) -> None:
        self.server, self.wrk, self.database, self.upstream = server, wrk, database.encode(), upstream
        self.worker = worker
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
        if self.worker is not None and self.worker in (pid, group):  # `window-gate worker`
            return "worker"
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


def _write_bodies(path: Path, count: int, per_body: int, kind: str, own: "OwnSends | None") -> None:
    """`count` signed deliveries of `per_body` events each, one per line as "<X-Hub-Signature-256>\\t<body>":
    messages (every message id new) from known or new customers, or statuses of the gate's own sends."""
    if kind == "status":
        assert own is not None
        payloads = _statuses(own.take(-(-count // 3) * per_body), per_body)
    else:
        payloads = _messages(count, per_body, kind)
    with path.open("wb") as f:
        for payload in payloads:
            body, headers = signed(payload)
            f.write(headers["X-Hub-Signature-256"].encode() + b"\t" + body + b"\n")


def _messages(count: int, per_body: int, kind: str) -> Iterator[dict[str, Any]]:
    """Customer messages: from random seeded customers (known), or each from one never seen before (new),
    half of those with a BSUID beside the wa_id, paired in `contacts` as Meta does."""
    series = next(_SERIES)  # so that message ids and new customers never repeat across files
    rng = random.Random(series)
    now = int(time.time())
    for i in range(count):
        messages, contacts = [], []
        for j in range(per_body):
            n = i * per_body + j
            at, message_id = now - rng.randint(0, 600), f"wamid.b{series}.{n}"
            if kind == "known":
                messages.append(inbound(f"1555{rng.randint(1, WINDOWS):07d}", ts=at, message_id=message_id))
                continue
            wa_id = f"1666{series:03d}{n:08d}"
            user_id = f"US.{series:04d}{n:016d}" if rng.random() < BSUID_SHARE else None
            messages.append(inbound(wa_id, ts=at, message_id=message_id, user_id=user_id))
            contacts.append(
                {"profile": {"name": "Ana"}, "wa_id": wa_id} | ({"user_id": user_id} if user_id else {})
            )
        yield delivery(messages, contacts=contacts or None)


def _statuses(sends: list[tuple[UUID, str, str]], per_body: int) -> Iterator[dict[str, Any]]:
    """Meta's statuses for these sends: each one's sent, then delivered, then read, STATUS_BLOCK deliveries
    apart, `per_body` statuses per delivery."""
    sent_at = int(time.time()) - 60
    block = STATUS_BLOCK * per_body
    for start in range(0, len(sends), block):
        part = sends[start : start + block]
        for state, after in STATUS_AFTER.items():
            for i in range(0, len(part), per_body):
                statuses = [
                    sent_status(wamid, f"{OPAQUE_PREFIX}{id}", wa_id, ts=sent_at + after, state=state)
                    for id, wamid, wa_id in part[i : i + per_body]
                ]
                yield delivery(statuses=statuses)


class OwnSends:
    """The seeded own sends, in a random order, each given its statuses once; when all have had them, they
    are moved back to `accepted` (between loads), so that every status moves a record forward."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.next = dsn, 0
        self.sends: list[tuple[UUID, str, str]] = [tuple(row) for row in asyncio.run(_fetch_all(dsn, OWN))]
        random.Random(1).shuffle(self.sends)

    def take(self, n: int) -> list[tuple[UUID, str, str]]:
        if self.next + n > len(self.sends):
            print(
                f"bench: all {len(self.sends):,} own sends had their statuses: back to accepted", flush=True
            )
            for tries_left in reversed(range(3)):  # statuses still landing from the last load can deadlock it
                try:
                    asyncio.run(_admin(self.dsn, RESET_OWN))
                    break
                except asyncpg.DeadlockDetectedError:
                    if not tries_left:
                        raise
            self.next = 0
        taken = self.sends[self.next : self.next + n]
        self.next += len(taken)
        return taken


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


async def _seed(url: str, sends: bool, own: bool) -> tuple[str, str, str]:
    """100,000 customers, each with its alias and a window on PN (for sends also 10,000 more whose window
    was opened just now, a month of earlier sends, and the reference's table; for statuses the gate's own
    recent sends); returns a read API key, a send one and an admin one (subscriptions)."""
    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            for statement in SEED + (SEED_SEND if sends else ()):
                await conn.execute(text(statement))
            read = await api_keys.create(conn, "bench", Role.READ)
            send = await api_keys.create(conn, "bench-send", Role.SEND)
            admin = await api_keys.create(conn, "bench-admin", Role.ADMIN)
            for statement in (SEED_HISTORY if sends else ()) + (SEED_OWN if own else ()):
                await conn.execute(text(statement))
            return read, send, admin
    finally:
        await engine.dispose()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch_all(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql)
        return rows
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

    def short(r: Result) -> bool:
        """Fewer events stored than acknowledged: the load matched nothing, or was dropped."""
        return r.messages_per_s is not None and (r.recorded_per_s or 0) < STORED_SHARE * r.messages_per_s

    pairs = {label: _median_pair(pairs_of_label) for label, pairs_of_label in rounds.items()}
    ours = [r for r in results if not r.scenario.endswith("· reference")]
    rss = max((max(r.rss_mib.values(), default=0.0) for r in ours), default=0.0)

    def clean(*rs: Result) -> bool:
        return all(r.errors == 0 and r.wrapped == 0 and not short(r) for r in rs)

    targets = []
    vs: dict[int, str] = {}
    for label, (ref, svc) in pairs.items():
        ratio_rps, ratio_p99 = svc.rps / ref.rps, svc.p99_ms / ref.p99_ms
        if label.startswith("webhook relay"):
            vs |= {id(ref): "(without)", id(svc): f"{ratio_rps:.2f}× deliveries/s · {ratio_p99:.2f}× p99"}
            continue
        if label.startswith("webhook"):
            vs |= {id(ref): "(reference)", id(svc): f"{ratio_rps:.2f}× deliveries/s · {ratio_p99:.2f}× p99"}
            continue
        vs |= {id(ref): "(reference)", id(svc): f"{ratio_rps:.0%} req/s · {ratio_p99:.2f}× p99"}
        targets += [
            (f"{label} req/s ≥ {TARGETS['ratio_rps']:.0%} of the reference's",
             f"{ratio_rps:.0%} ({svc.rps:,.0f} vs {ref.rps:,.0f})",
             ratio_rps >= TARGETS["ratio_rps"] and clean(ref, svc)),
            (f"{label} p99 ≤ {TARGETS['ratio_p99']:g}× the reference's",
             f"{ratio_p99:.2f}× ({svc.p99_ms:.1f} vs {ref.p99_ms:.1f} ms)",
             ratio_p99 <= TARGETS["ratio_p99"] and clean(ref, svc)),
        ]  # fmt: skip
    one = {  # (kind, events per delivery) → (reference, service) at one worker, where the targets are judged
        (kind, per_body): pairs[label]
        for kind in INGEST
        for per_body in PER_BODY
        if (label := _ingest_label(kind, per_body, 1)) in pairs
    }
    if ("known", 1) in one:
        ref, svc = one["known", 1]
        targets.append(
            (f"webhook known customers, deliveries/s ≥ {TARGETS['known_vs_reference']:g}× the reference's (1 worker)",
             f"{svc.rps / ref.rps:.2f}× ({svc.rps:,.0f} vs {ref.rps:,.0f})",
             svc.rps >= TARGETS["known_vs_reference"] * ref.rps and clean(ref, svc)),
        )  # fmt: skip
    if ("new", 1) in one:
        ref, svc = one["new", 1]
        moonshot = f"; known customers {one['known', 1][1].rps:,.0f}" if ("known", 1) in one else ""
        targets.append(
            (f"webhook new customers, deliveries/s ≥ {TARGETS['new_vs_reference']:g}× the reference's (1 worker)",
             f"{svc.rps / ref.rps:.2f}× ({svc.rps:,.0f} vs {ref.rps:,.0f}{moonshot})",
             svc.rps >= TARGETS["new_vs_reference"] * ref.rps and clean(ref, svc)),
        )  # fmt: skip
    for per_body, target in ((1, "status_per_s"), (100, "status_batch_per_s")):
        if ("status", per_body) in one:
            ref, svc = one["status", per_body]
            rate = svc.messages_per_s or 0
            shape = "single" if per_body == 1 else f"in batches of {per_body}"
            targets.append(
                (f"webhook statuses/s {shape} ≥ {TARGETS[target]:,} (1 worker)",
                 f"{rate:,.0f} (reference {ref.messages_per_s or 0:,.0f})",
                 rate >= TARGETS[target] and clean(svc)),
            )  # fmt: skip
    relay_label = _ingest_label("relay", 1, 1)
    if relay_label in pairs:
        without, relaying = pairs[relay_label]
        every = [pair[1] for pair in rounds[relay_label]]
        targets += [
            (f"webhook ingest with {RELAY_SUBSCRIBERS} subscribers ≥ {TARGETS['relay_vs_without']:.0%} of without (1 worker)",
             f"{relaying.rps / without.rps:.0%} ({relaying.rps:,.0f} vs {without.rps:,.0f}); drained "
             + ", ".join(f"{r.drain_s:.1f} s" for r in every),
             relaying.rps >= TARGETS["relay_vs_without"] * without.rps and clean(without, relaying)
             and all(map(_relayed_all, every))),
            ("every delivery kept relayed to each subscriber, outbox drained (every round)",
             "; ".join(f"{r.relayed:,} of {r.relay_expected:,}, {r.relay_repeats} repeated, "
                       f"{r.bad_signatures} badly signed" for r in every),
             all(map(_relayed_all, every))),
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
        f"\n{_revision()} · {args.workers} workers each (webhook: {', '.join(map(str, args.ingest_workers))}) · wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(+{args.warmup} s warm-up) · {WINDOWS:,} seeded windows · {os.cpu_count()} CPUs · {', '.join(args.only)}\n",
        "| scenario | req/s | p50 ms | p99 ms | events/s (stored/s) | vs reference "
        "| CPU ms/req app + PG (+ upstream) | PG conns opened | worker balance | RSS max/worker MiB | errors "
        "| other CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        msgs = "" if r.messages_per_s is None else f"{r.messages_per_s:,.0f} ({r.recorded_per_s:,.0f})"
        msgs += f" ⚠ stored under {STORED_SHARE:.0%}" if short(r) else ""
        errors = f"{r.errors}" + (f" (body pool reused {r.wrapped}×)" if r.wrapped else "")
        upstream = f" (+ {r.upstream_cpu_ms:.2f})" if r.upstream_cpu_ms else ""
        upstream += f" (worker {r.worker_cpu_ms:.2f})" if r.worker_cpu_ms else ""
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
        if label.startswith("webhook relay"):
            lines.append(
                f"\n{label}, relay jobs in {args.relay_jobs!r} (worker niceness {args.worker_nice}), "
                f"{RELAY_SUBSCRIBERS} subscriptions vs none "
                f"in each round: {per_round}; the median round is shown. The outbox after each load with "
                "subscriptions: "
                + "; ".join(
                    f"{b.backlog:,} left, drained in {b.drain_s:.1f} s at {b.drain_app_cpu_ms:.2f} ms app "
                    f"(serve + worker) CPU per delivery, {b.relayed:,} of {b.relay_expected:,} relayed"
                    for _, b in pairs_of_label
                )
            )
            continue
        lines.append(
            f"\n{label}, service vs reference in each round: {per_round}; the median round is shown."
        )
    if own_by_status := getattr(args, "own_by_status", None):
        lines.append(f"\nown sends by status after the status loads: {own_by_status}")
    lines += ["", "| target | measured | verdict |", "|---|--:|---|"]
    lines += [f"| {t} | {m} | {'PASS' if ok else 'FAIL'} |" for t, m, ok in targets]
    lines.append(
        "\nevents/s: webhook events (messages or statuses) in the deliveries acknowledged per second; stored/s: "
        "inbound_messages or message_events rows written meanwhile, read back from the database (⚠ under "
        f"{STORED_SHARE:.0%} of those acknowledged: the scenario fails its target). CPU ms/req: CPU time of the "
        "server's processes and of its PostgreSQL backends per request (robust to a busy machine). "
        "PG conns opened: new database sessions during the load (pool churn). worker balance: CPU of "
        f"the least busy worker over the busiest's (runs under {MIN_BALANCE} are repeated, {ATTEMPTS} at most). "
        "upstream: CPU of the Graph API stand-in per send, or of the relay's receiver per delivery (not "
        "counted as app); worker: of the `window-gate worker` beside serve (not counted as app). other CPU: CPUs' worth of work by processes outside the benchmark meanwhile "
        "(> 0.2 makes req/s and latency pessimistic)."
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
