"""The ASGI middlewares the factory wraps around the app: the hot-path dispatcher and the body limit.
(The input check is inputs.py, the metrics metrics.py.)"""

import re
from collections.abc import Callable

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from window_gate.errors import GateError, PayloadTooLarge


class HotPaths:
    """The two hottest calls (window check, webhook ingest) answered without FastAPI's routing and
    per-request machinery, half their CPU (bench/): the same endpoint functions as the documented
    routes, matched as the router would (`route.matches`), their errors through the app's own exception
    handlers."""

    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for route in self.routes if scope["type"] == "http" else ():
            match, child = route.matches(scope)
            if match is Match.FULL:  # PARTIAL (another method) is the router's: it answers 405
                scope.update(child)
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
    """Refuse bodies over the limit with 413 before any handler reads them, declared or streamed. Paths
    matching `larger` (bodies streamed to Meta, never read here) have their own limit; `render` answers
    the refusal in the shape of the path's errors."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        render: Callable[[str, GateError], Response],
        larger: tuple[re.Pattern[str], int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.render = render
        self.larger = larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        if self.larger is not None and self.larger[0].match(scope["path"]):
            max_bytes = self.larger[1]
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(max_bytes, scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _TooLarge(max_bytes)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(max_bytes, scope, receive, send)

    async def _refuse(self, max_bytes: int, scope: Scope, receive: Receive, send: Send) -> None:
        err = PayloadTooLarge(f"the body is larger than {max_bytes} bytes; nothing was written")
        await self.render(scope["path"], err)(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    # An HTTPException so FastAPI's body parsing re-raises it: any other exception there becomes a 400.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the body is larger than {max_bytes} bytes; nothing was written")
