"""The application factory: routes, error handling, and a lifespan owning the engine."""

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.responses import Response

from window_gate import __doc__ as description
from window_gate import db, jobs, replica
from window_gate.apikey import access
from window_gate.apikey.endpoints import router as api_key_router
from window_gate.apikey.service import AllowList, Authenticator
from window_gate.background import registry as job_registry
from window_gate.config import DEFAULT_GRAPH_BASE_URL, Settings
from window_gate.consent.endpoints import router as consent_router
from window_gate.consent.rules import Keywords
from window_gate.crypto import Sealer
from window_gate.errors import (
    DatabaseUnavailable,
    GateError,
    install_error_handlers,
    problem_response,
    validation_failed,
)
from window_gate.graph.client import GraphClient
from window_gate.graph.transport import GraphTransport
from window_gate.health.endpoints import healthz, metrics, readyz
from window_gate.health.endpoints import router as health_router
from window_gate.inputs import InputCheck
from window_gate.kit import Gate
from window_gate.logs import RequestLog
from window_gate.message import held
from window_gate.message.endpoints import as_meta_error, conversation_router, graph_router
from window_gate.message.endpoints import router as message_router
from window_gate.message.endpoints import template_router as template_send_router
from window_gate.metrics import MetricsMiddleware, watch_pools
from window_gate.middlewares import BodyLimit, HotPaths
from window_gate.passthrough.endpoints import PROXIED
from window_gate.passthrough.endpoints import router as passthrough_router
from window_gate.phonenumber.endpoints import router as phone_number_router
from window_gate.pricing import service as pricing_service
from window_gate.pricing import tables as pricing_tables
from window_gate.pricing.endpoints import budgets_router, costs_router
from window_gate.subscription.endpoints import router as subscription_router
from window_gate.subscription.service import Busy
from window_gate.template.endpoints import router as template_router
from window_gate.webhook.endpoints import receive
from window_gate.webhook.endpoints import router as webhook_router
from window_gate.webhook.service import DeliveryRecorder
from window_gate.window import service as window_service
from window_gate.window.endpoints import get_window
from window_gate.window.endpoints import router as window_router

log = logging.getLogger(__name__)

# Makes the transport to Meta once the app exists (the in-process sandbox posts its webhooks into it);
# None: the network. The entry points pass window_gate.sandbox.in_process; this module never imports it.
TransportFactory = Callable[[Settings, FastAPI], httpx.AsyncBaseTransport | None]


def create_app(
    settings: Settings, graph_transport: httpx.AsyncBaseTransport | TransportFactory | None = None
) -> FastAPI:
    """The service. `graph_transport` replaces the network to Meta: a transport (tests), or a factory
    (the in-process sandbox, which sandbox mode with the default Graph URL requires)."""
    if settings.otel_enabled:  # imported only then: OpenTelemetry's SDK stays unloaded otherwise
        from window_gate import tracing

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What start-up opened is released even when a later step fails (in reverse order).
        async with contextlib.AsyncExitStack() as opened:
            parts: list[object] = [
                window_service.policy(settings),
                pricing_tables.configured(settings),  # a bad file stops start-up here: one line
                pricing_service.FreeTiers(),
                Keywords.configured(settings),
                Sealer(settings.encryption_keys),
            ]
            url = await asyncio.to_thread(db.database_url, settings)
            engine = db.make_engine(url, settings.db_pool_size, settings.db_timeout_seconds)
            opened.push_async_callback(engine.dispose)
            hot = await db.make_hot_pool(url, settings.db_pool_size, settings.db_timeout_seconds)
            opened.push_async_callback(hot.close)
            pools = asyncio.create_task(watch_pools(engine, hot))  # /metrics' figures of this process
            opened.callback(pools.cancel)
            http = httpx.AsyncClient(
                base_url=settings.graph_base_url,
                timeout=httpx.Timeout(
                    settings.graph_timeout_seconds, connect=min(5.0, settings.graph_timeout_seconds)
                ),
                limits=httpx.Limits(max_connections=settings.graph_max_connections),
                transport=_transport(settings, app, graph_transport),
            )
            if settings.otel_enabled:
                tracing.instrument_client(http)
            # Closed first: the in-process simulator stops posting webhooks before the pools close.
            opened.push_async_callback(http.aclose)
            graph = GraphClient(http, settings.graph_api_version, settings.graph_access_token)
            parts += [
                Authenticator(hot, settings.api_key_cache_seconds),
                AllowList(engine, settings.api_key_cache_seconds, settings.allow_listed_numbers_only),
                DeliveryRecorder.configured(hot, settings),
                held.Waker(engine),
                Busy(hot),
            ]
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
            reads: db.Rows = hot
            if settings.read_database_url:
                reads = await replica.connect(settings, settings.read_database_url, hot, autocommit, opened)
            state = Gate(settings, engine, autocommit, hot, reads, graph, {type(p): p for p in parts})
            app.state.gate = state
            if settings.jobs_in_serve:  # else `window-gate worker` processes run them all
                await opened.enter_async_context(
                    jobs.running(settings, url, job_registry(), settings.jobs_concurrency, {Gate: state})
                )
            try:
                yield
            finally:
                for task in state.background:
                    task.cancel()

    # /docs and /redoc from assets inside the installed package (fastapi-offline: Swagger UI 5, Redoc 2),
    # not from a CDN: ops open them where the gate runs, often without a way out to the internet.
    app = FastAPIOffline(
        title="window_gate",
        version="0.1.0",
        summary="WhatsApp customer-service-window gatekeeper in front of Meta's Cloud API",
        description=description or "",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # its badge would ask validator.swagger.io
        # FastAPI's own OpenTelemetry hooks, off: /metrics and the request log say what ops need, and
        # asking whether a tracer is configured on every request cost ~3 % of a webhook's CPU (bench/).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(OSError, _database_unavailable)  # TimeoutError too: a call past its bound
    # asyncpg's own view of a connection lost or broken mid-call (the hot pool; SQLAlchemy wraps them).
    app.add_exception_handler(asyncpg.InterfaceError, _database_unavailable)
    app.add_exception_handler(asyncpg.InternalClientError, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.PostgresError, _database_error)
    routers = (
        health_router,
        webhook_router,
        window_router,
        message_router,
        conversation_router,
        template_router,
        template_send_router,
        consent_router,
        costs_router,
        budgets_router,
        subscription_router,
        phone_number_router,
        api_key_router,
        graph_router,
        passthrough_router,  # after graph_router: POST …/messages is the gated send's
    )
    for router in routers:
        app.include_router(router)
    if undeclared := access.undeclared(app.routes):  # a route that forgot its scope never serves
        raise RuntimeError(f"routes without an Access (apikey/access.py): {', '.join(undeclared)}")
    app.add_middleware(HotPaths, routes=_routes_of(routers, get_window, receive))
    raw_bodies = [route.path for route in _routes_of(routers, receive)]  # signed: verified, then parsed
    app.add_middleware(InputCheck, render=_refusal, raw_bodies=raw_bodies, raw_paths=PROXIED)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        render=_refusal,
        larger=(PROXIED, settings.max_upload_bytes),  # streamed to Meta, never read here
    )
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestLog, quiet={get_window, receive, healthz, readyz, metrics})
    if settings.otel_enabled:
        tracing.instrument_app(app)
    return app


async def _database_error(request: Request, exc: Exception) -> Response:
    """SQLAlchemy's DBAPIError, or asyncpg's own error on the hot-path pool."""
    invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
    sqlstate = str(getattr(getattr(exc, "orig", exc), "sqlstate", None) or "")
    if invalidated or sqlstate[:2] in db.UNAVAILABLE_SQLSTATE_CLASSES:
        return await _database_unavailable(request, exc)
    raise exc  # a bug, not an outage: a 500


def _graph_pool(settings: Settings) -> httpx.AsyncBaseTransport | None:
    """Our pool, O(1) per request under a burst (graph/transport.py); httpx's own where the environment
    names a proxy (HTTPS_PROXY…), which only httpx's pool speaks."""
    if urllib.request.getproxies():
        return None
    return GraphTransport(settings.graph_max_connections)


def _transport(
    settings: Settings, app: FastAPI, given: httpx.AsyncBaseTransport | TransportFactory | None
) -> httpx.AsyncBaseTransport | None:
    transport = (
        given if given is None or isinstance(given, httpx.AsyncBaseTransport) else given(settings, app)
    )
    if transport is None and settings.sandbox_mode and settings.graph_base_url == DEFAULT_GRAPH_BASE_URL:
        # A sandbox must never reach Meta: without the simulator it would send to the real Graph API.
        raise RuntimeError(
            "sandbox mode with WINDOW_GATE_GRAPH_BASE_URL unset needs the in-process simulator: "
            "create_app(settings, window_gate.sandbox.in_process), or set WINDOW_GATE_GRAPH_BASE_URL"
        )
    return transport or _graph_pool(settings)


def _refusal(path: str, err: GateError) -> Response:
    """A malformed or oversized request, answered in the shape of its route's errors: Meta's under /graph."""
    if path.startswith(graph_router.prefix + "/"):
        return as_meta_error(err)
    return problem_response(err.status, err.problem())


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return _refusal(request.scope["path"], validation_failed(exc))


async def _database_unavailable(_: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    err = DatabaseUnavailable("the database cannot be reached; nothing was decided (fail closed)")
    return problem_response(err.status, err.problem(), {"Retry-After": "1"})


def _routes_of(routers: tuple[APIRouter, ...], *endpoints: object) -> list[APIRoute]:
    """The routes serving these endpoints, read from the routers themselves: FastAPI's app.routes holds
    included routers, not their routes (a silent miss once cost the hot paths; hence the check)."""
    routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    found = [r for r in routes if r.endpoint in endpoints]
    if len(found) != len(endpoints):
        raise RuntimeError(f"hot paths: {len(found)} routes found for {len(endpoints)} endpoints")
    return found
