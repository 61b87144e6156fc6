"""Prometheus metrics, every one listed in the README's catalogue (tests/test_metrics.py holds the two to
each other). Label values come from fixed sets only (routes, problem codes, Meta codes the gate knows,
states): never a phone number, customer, message id or free text.

The hot paths only count; what needs a query (backlogs) or a look at the pools is read when /metrics is
scraped (`read_at_scrape`)."""

import asyncio
import functools
import logging
import os
import time
from typing import TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from window_gate import errors, jobs, logs
from window_gate.db import HotPool
from window_gate.models import RELAY_DUE_STATES, IngestPressure, RelayDelivery, RelayFanout

log = logging.getLogger(__name__)

REQUESTS = Counter("window_gate_http_requests", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "window_gate_http_request_duration_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REFUSALS = Counter(
    "window_gate_refusals",
    "Answers with a problem (4xx, 5xx) by route template and problem code (docs/errors.md; `other` if none)",
    ["route", "code"],
)
WEBHOOK_MESSAGES = Counter(
    "window_gate_webhook_messages", "Webhook items by kind and outcome", ["type", "outcome"]
)
WEBHOOK_LAG = Histogram(
    "window_gate_webhook_ingest_lag_seconds",
    "Each applied webhook delivery: its receive time minus Meta's timestamp of its oldest message or status",
    buckets=(1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600),
)
SENDS = Counter(
    "window_gate_sends",
    "Gated sends by kind (template, free_form) and outcome: accepted, held_for_quality_assessment (Meta "
    "took it), failed (Meta refused), not_sent (Meta unreachable), unknown (no answer), refused (by the gate, "
    "before Meta)",
    ["kind", "outcome"],
)
BUDGET_REFUSALS = Counter(
    "window_gate_budget_refusals", "Sends refused by a monthly budget, by the budget's scope", ["scope"]
)
SPEND = Counter(
    "window_gate_spend_estimated",
    "Estimated cost of the sends Meta took (the rate card's amount, in its currency), by pricing category",
    ["currency", "category"],
)
UPSTREAM_LATENCY = Histogram(
    "window_gate_upstream_request_duration_seconds",
    "Graph API calls (connection retries included) by operation and result: ok, meta_error (Meta answered "
    "with an error), unreachable, no_answer, unreadable",
    ["operation", "result"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_ERRORS = Counter(
    "window_gate_upstream_errors",
    "Meta's error answers by operation and Meta error code (the codes of graph/reactions.py, else other)",
    ["operation", "code"],
)
WINDOW_DECISIONS = Counter("window_gate_window_decisions", "Window evaluations by state", ["state"])
REPLICA_READS = Counter(
    "window_gate_replica_reads",
    "Window checks (READ_DATABASE_URL set) by the server that answered: replica, or primary when the "
    "replica may be too far behind or failed",
    ["server"],
)
REPLICA_LAG = Gauge(
    "window_gate_replica_lag_seconds",
    "At most this far behind the primary is the read replica: seconds since the newest primary WAL "
    "position it is known to have replayed (+Inf until a probe confirms one)",
    multiprocess_mode="mostrecent",  # the worker answering the scrape has just probed
)
HELD = Counter(
    "window_gate_held_messages",
    "Continue the conversation: waits started (a template sent), messages joining a wait (a template "
    "saved), and held messages released, expired, cancelled or failed",
    ["event"],
)
JOBS = Gauge(
    "window_gate_jobs",
    "Background jobs in the queue (all replicas) by entrypoint and state: queued (due), scheduled (due "
    "later), picked (running), failed (dead after its retries)",
    ["entrypoint", "state"],
    multiprocess_mode="mostrecent",  # every worker reads the same table; the latest read wins
)
_jobs_seen: set[tuple[str, str]] = set()
RELAY_BACKLOG = Gauge(
    "window_gate_relay_backlog",
    "Subscription deliveries not yet delivered (all replicas), by state: pending (first try due or "
    "running), failed (retrying later), fanout (Meta deliveries kept and not yet made into one per "
    "subscriber: each counted once)",
    ["state"],
    multiprocess_mode="mostrecent",
)
RELAY_HELD_BACK = Gauge(
    "window_gate_relay_held_back",
    "1 while webhook ingest says it is under load and the relay holds back what is due (up to "
    "RELAY_YIELD_SECONDS), else 0",
    multiprocess_mode="mostrecent",
)
DB_POOL = Gauge(
    "window_gate_db_pool_connections",
    "Database connections of the pools (hot: asyncpg, orm: SQLAlchemy) by state: max, open, in_use; read "
    "at each scrape and every 5 s",
    ["pool", "state"],
    multiprocess_mode="livesum",  # every worker's pools, added up
)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts every request under its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.codes = errors.codes()  # built with the app: every feature's errors are defined by now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            child(REQUESTS, scope["method"], route, str(status)).inc()
            child(LATENCY, route).observe(time.perf_counter() - start)
            if status >= 400:  # the problem renderer notes its code on the request (logs.note)
                code = logs.noted().get("code")
                REFUSALS.labels(route, code if code in self.codes else "other").inc()


Labelled = TypeVar("Labelled", Counter, Histogram)


def child(metric: Labelled, *labels: str) -> Labelled:
    """`metric.labels(*labels)`, kept: the hot paths find it again without `labels`' lock and checks
    (label values come from fixed sets, so there are a few hundred at most)."""
    return cast(Labelled, _child(metric, labels))


@functools.cache
def _child(metric: Counter | Histogram, labels: tuple[str, ...]) -> Counter | Histogram:
    return metric.labels(*labels)


async def metrics_endpoint(_: Request) -> Response:
    # With several workers each process writes its samples to PROMETHEUS_MULTIPROC_DIR (set by `serve`).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def read_at_scrape(engine: AsyncEngine, hot: HotPool) -> None:
    """Set the gauges a scrape reads: the job queue, the relay outbox (one small query each: live rows
    only, the outbox's through its partial index of undelivered rows) and whether the relay holds back
    (one row), and this process's pools. A
    backlog that cannot be read leaves the last figures; the scrape still answers."""
    try:
        async with engine.connect() as conn:
            job_counts = {(entrypoint, state): n for entrypoint, state, n in await jobs.backlog(conn)}
            relay_counts = await _relay_backlog(conn)
            held_back = await conn.scalar(select(IngestPressure.busy_until > func.now()))
    except Exception:
        log.warning("backlog unreadable", exc_info=True)
    else:
        for gone in _jobs_seen - job_counts.keys():  # emptied since the last scrape: 0, not stale
            JOBS.labels(*gone).set(0)
        for labels, n in job_counts.items():
            JOBS.labels(*labels).set(n)
        _jobs_seen.update(job_counts)
        for state in (*RELAY_DUE_STATES, "fanout"):
            RELAY_BACKLOG.labels(state).set(relay_counts.get(state, 0))
        RELAY_HELD_BACK.set(1 if held_back else 0)
    read_pools(engine, hot)


def read_pools(engine: AsyncEngine, hot: HotPool) -> None:
    """This process's pools into DB_POOL, from the pool objects (no query)."""
    orm = cast(QueuePool, engine.pool)
    for pool, figures in (
        ("hot", hot.figures()),
        ("orm", (orm.size(), orm.checkedin() + orm.checkedout(), orm.checkedout())),
    ):
        for state, n in zip(("max", "open", "in_use"), figures, strict=True):
            DB_POOL.labels(pool, state).set(n)


POOLS_EVERY_SECONDS = 5.0


async def watch_pools(engine: AsyncEngine, hot: HotPool) -> None:
    """`read_pools` every few seconds, for as long as the app runs: with several workers, a scrape reaches
    one of them, and the others' figures must not be those of their last scrape."""
    while True:
        read_pools(engine, hot)
        await asyncio.sleep(POOLS_EVERY_SECONDS)


async def _relay_backlog(conn: AsyncConnection) -> dict[str, int]:
    query = (
        select(RelayDelivery.state, func.count())
        .where(RelayDelivery.state.in_(RELAY_DUE_STATES))
        .group_by(RelayDelivery.state)
    )
    fanout = select(literal("fanout"), func.count()).select_from(RelayFanout)  # one snapshot: a fan-out
    return {state: n for state, n in await conn.execute(query.union_all(fanout))}  # moves rows between both
