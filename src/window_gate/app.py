"""The application factory: routes, error handling, and a lifespan owning the engine."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI, Request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from window_gate import __doc__ as description
from window_gate import db
from window_gate.apikey.service import Authenticator
from window_gate.config import Settings
from window_gate.errors import DatabaseUnavailable, PayloadTooLarge, install_error_handlers, problem_response
from window_gate.health.endpoints import router as health_router
from window_gate.kit import Gate
from window_gate.metrics import MetricsMiddleware
from window_gate.webhook import repository as webhooks
from window_gate.webhook.endpoints import router as webhook_router
from window_gate.window.endpoints import router as window_router
from window_gate.window.rule import Policy

log = logging.getLogger(__name__)
PURGE_EVERY_SECONDS = 3600


def policy(settings: Settings) -> Policy:
    return Policy(
        window=timedelta(hours=settings.window_hours),
        margin=timedelta(seconds=settings.safety_margin_seconds),
        free_entry_point=timedelta(hours=settings.free_entry_point_hours),
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
    )


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = await asyncio.to_thread(db.database_url, settings)
        engine = db.make_engine(url, settings.db_pool_size)
        app.state.gate = Gate(
            settings, engine, policy(settings), Authenticator(engine, settings.api_key_cache_seconds)
        )
        purger = asyncio.create_task(_purge_forever(app.state.gate))
        try:
            yield
        finally:
            purger.cancel()
            await engine.dispose()

    app = FastAPI(
        title="window_gate",
        version="0.1.0",
        summary="WhatsApp customer-service-window gatekeeper in front of Meta's Cloud API",
        description=description or "",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(OSError, _database_unavailable)
    for router in (health_router, webhook_router, window_router):
        app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    return app


async def _database_unavailable(_: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    err = DatabaseUnavailable("the database cannot be reached; nothing was decided (fail closed)")
    return problem_response(err.status, err.problem(), {"Retry-After": "1"})


async def _purge_forever(state: Gate) -> None:
    """Retention: drop raw deliveries older than WINDOW_GATE_WEBHOOK_RETENTION_DAYS, hourly."""
    while True:
        await asyncio.sleep(PURGE_EVERY_SECONDS)
        try:
            async with state.engine.begin() as conn:
                await webhooks.purge(conn, state.settings.webhook_retention_days)
        except Exception:  # a failed purge must not end the task; the next hour tries again
            log.exception("retention purge failed")


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
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = PayloadTooLarge(f"the body is larger than {self.max_bytes} bytes; nothing was written")
        await problem_response(err.status, err.problem())(scope, receive, send)


class _TooLarge(Exception):
    pass
