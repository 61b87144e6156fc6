"""The application factory: routes, error handling, and a lifespan owning the engine."""

import asyncio
import contextlib
import functools
import logging
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from window_gate import __doc__ as description
from window_gate import db, jobs
from window_gate.apikey import access
from window_gate.apikey.service import Authenticator
from window_gate.background import registry as job_registry
from window_gate.config import DEFAULT_GRAPH_BASE_URL, Settings
from window_gate.consent.endpoints import router as consent_router
from window_gate.errors import (
    DatabaseUnavailable,
    PayloadTooLarge,
    ValidationFailed,
    install_error_handlers,
    problem_response,
    validation_failed,
)
from window_gate.graph.client import GraphClient
from window_gate.graph.transport import GraphTransport
from window_gate.health.endpoints import router as health_router
from window_gate.inputs import InputCheck
from window_gate.kit import Gate
from window_gate.message.endpoints import as_meta_error, graph_router
from window_gate.message.endpoints import router as message_router
from window_gate.metrics import MetricsMiddleware
from window_gate.pricing.endpoints import budgets_router, costs_router
from window_gate.sandbox import InProcess, SimulatorConfig
from window_gate.template.endpoints import router as template_router
from window_gate.webhook.endpoints import receive
from window_gate.webhook.endpoints import router as webhook_router
from window_gate.window import repository as windows
from window_gate.window.endpoints import get_window
from window_gate.window.endpoints import router as window_router
from window_gate.window.rule import Policy

log = logging.getLogger(__name__)


def policy(settings: Settings) -> Policy:
    return Policy(
        window=timedelta(hours=settings.window_hours),
        margin=timedelta(seconds=settings.safety_margin_seconds),
        free_entry_point=timedelta(hours=settings.free_entry_point_hours),
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
    )


def create_app(settings: Settings, graph_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The service. `graph_transport` replaces the network to Meta (tests, the in-process sandbox)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = await asyncio.to_thread(db.database_url, settings)
        transport = graph_transport or _in_process_sandbox(settings, app) or _graph_pool(settings)
        engine = db.make_engine(url, settings.db_pool_size, settings.db_timeout_seconds)
        hot = await db.make_hot_pool(url, settings.db_pool_size, settings.db_timeout_seconds)
        http = httpx.AsyncClient(
            base_url=settings.graph_base_url,
            timeout=httpx.Timeout(
                settings.graph_timeout_seconds, connect=min(5.0, settings.graph_timeout_seconds)
            ),
            limits=httpx.Limits(max_connections=settings.graph_max_connections),
            transport=transport,
        )
        graph = GraphClient(http, settings.graph_api_version, settings.graph_access_token)
        auth = Authenticator(hot, settings.api_key_cache_seconds)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        record = db.Coalescer(functools.partial(windows.record_deliveries, hot))
        state = Gate(settings, engine, autocommit, hot, record, policy(settings), auth, graph)
        app.state.gate = state
        background: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
        if settings.jobs_in_serve:  # else `window-gate worker` processes run them all
            background = jobs.running(settings, url, job_registry(), settings.jobs_concurrency)
        try:
            async with background:
                yield
        finally:
            for task in state.background:
                task.cancel()
            await http.aclose()
            await hot.close()
            await engine.dispose()

    app = FastAPI(
        title="window_gate",
        version="0.1.0",
        summary="WhatsApp customer-service-window gatekeeper in front of Meta's Cloud API",
        description=description or "",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
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
        template_router,
        consent_router,
        costs_router,
        budgets_router,
        graph_router,
    )
    for router in routers:
        app.include_router(router)
    if undeclared := access.undeclared(app.routes):  # a route that forgot its scope never serves
        raise RuntimeError(f"routes without an Access (apikey/access.py): {', '.join(undeclared)}")
    app.add_middleware(HotPaths, routes=_routes_of(routers, get_window, receive))
    raw_bodies = [route.path for route in _routes_of(routers, receive)]  # signed: verified, then parsed
    app.add_middleware(InputCheck, render=_refusal, raw_bodies=raw_bodies)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
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


def _in_process_sandbox(settings: Settings, app: FastAPI) -> httpx.AsyncBaseTransport | None:
    """Sandbox mode with no simulator URL given: the simulator runs inside this process and posts its
    webhooks straight into this app, so a sandbox never reaches Meta. (`serve` runs one beside it.)"""
    if not settings.sandbox_mode or settings.graph_base_url != DEFAULT_GRAPH_BASE_URL:
        return None
    config = SimulatorConfig(
        webhook_url="http://gate/webhooks/whatsapp",
        app_secret=settings.app_secrets[0].decode(),
        webhook_transport=httpx.ASGITransport(app=app),
        data_dir=settings.data_dir / "sandbox",
    )
    return InProcess(config)


def _refusal(path: str, err: ValidationFailed) -> Response:
    """A malformed request, answered in the shape of its route's errors: Meta's under /graph."""
    if path.startswith(graph_router.prefix + "/"):
        return as_meta_error(err)
    return problem_response(err.status, err.problem())


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
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


class HotPaths:
    """The two hottest calls (window check, webhook ingest) answered without FastAPI's routing and
    per-request machinery, half their CPU (bench/): the same endpoint functions as the documented
    routes, their errors through the app's own exception handlers."""

    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self.routes = [(route, compile_path(route.path)[0]) for route in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for route, path in self.routes if scope["type"] == "http" else ():
            if scope["method"] in (route.methods or ()) and (match := path.match(scope["path"])):
                scope["path_params"], scope["route"] = match.groupdict(), route
                request = Request(scope, receive)
                try:
                    response = await route.endpoint(request)
                except Exception as exc:
                    response = await _handle(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _handle(request: Request, exc: Exception) -> Response:
    handlers = request.app.exception_handlers
    handler = next((handlers[kind] for kind in type(exc).__mro__ if kind in handlers), None)
    if handler is None:
        raise exc
    response: Response = await handler(request, exc)
    return response


class BodyLimit:
    """Refuse bodies over the limit with 413 before any handler reads them, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = PayloadTooLarge(f"the body is larger than {self.max_bytes} bytes; nothing was written")
        await problem_response(err.status, err.problem())(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    # An HTTPException so FastAPI's body parsing re-raises it: any other exception there becomes a 400.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the body is larger than {max_bytes} bytes; nothing was written")
