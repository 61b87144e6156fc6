"""Prometheus metrics: request counts and latency by route, webhook messages, window decisions, the read
replica's lag, and the backlog of background jobs."""

import logging
import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from window_gate import jobs

log = logging.getLogger(__name__)

REQUESTS = Counter("window_gate_http_requests", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "window_gate_http_request_duration_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WEBHOOK_MESSAGES = Counter(
    "window_gate_webhook_messages", "Webhook items by kind and outcome", ["type", "outcome"]
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


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts every request under its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(route).observe(time.perf_counter() - start)


async def metrics_endpoint(_: Request) -> Response:
    # With several workers each process writes its samples to PROMETHEUS_MULTIPROC_DIR (set by `serve`).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def read_job_backlog(engine: AsyncEngine) -> None:
    """Set JOBS from the queue: one small query per scrape (the table holds live jobs only). A backlog
    that cannot be read leaves the last figures; the scrape still answers."""
    try:
        async with engine.connect() as conn:
            counts = {(entrypoint, state): n for entrypoint, state, n in await jobs.backlog(conn)}
    except Exception:
        log.warning("job backlog unreadable", exc_info=True)
        return
    for gone in _jobs_seen - counts.keys():  # a state emptied since the last scrape reads 0, not stale
        JOBS.labels(*gone).set(0)
    for labels, n in counts.items():
        JOBS.labels(*labels).set(n)
    _jobs_seen.update(counts)
