"""Logging, configured in one place: one JSON line per event on stderr (or console lines for a human),
with the request id of the request that caused it.

Our own events go through structlog (`structlog.stdlib.get_logger(__name__).info("event", key=value)`);
the standard library's loggers (uvicorn's, `logging.getLogger` in our modules and libraries) render
through the same processors, so an operator reads one format. Nothing that may hold a secret is logged:
no header but X-Request-ID, no body, no query string (the webhook verification carries a token there),
no database URL password; fields named like a secret are blanked at the last step anyway.

`RequestLog` is the pure ASGI middleware that gives each request its id and logs one line when it ends;
code deeper in the stack adds to that line with `note(code=…)` (the problem renderer does, and so does
the authenticator with the caller's key id).
"""

import logging
import os
import re
import sys
import time
from collections.abc import Collection, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
# An id a caller or a proxy chose is kept when it is short and plain, so it cannot forge log fields.
WELL_FORMED_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
SECRET_FIELDS = frozenset({"authorization", "api_key", "key", "token", "secret", "password", "app_secret"})
MAX_PATH = 200

log = structlog.stdlib.get_logger("window_gate.request")
_level_of = logging.getLogger("window_gate.request")  # its level check, without structlog's proxy
_notes: ContextVar[dict[str, Any] | None] = ContextVar("window_gate_log_notes", default=None)
# Our own variable, read only when a line is written: structlog's bind/reset per request cost the window
# check a tenth of its CPU (bench/run.py --only window).
_request_id: ContextVar[bytes | None] = ContextVar("window_gate_request_id", default=None)


def _add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    rid = _request_id.get()
    if rid is not None:
        event.setdefault("request_id", rid.decode())
    return event


# Our own events through the standard library, so one handler (set by `configure`) renders everything.
_BEFORE: list[Any] = [
    structlog.contextvars.merge_contextvars,
    _add_request_id,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
]
structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        *_BEFORE,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)


class _Stderr(logging.StreamHandler[TextIO]):
    """Whatever sys.stderr is when a record is written, not when configured (a test runner swaps it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Route every logger through one handler on `stream` (stderr), at WINDOW_GATE_LOG_LEVEL, in
    WINDOW_GATE_LOG_FORMAT. Called once by each entry point (cli, asgi); the last call wins."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_BEFORE,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            *([] if fmt == "console" else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream) if stream else _Stderr()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # uvicorn installs handlers of its own (unless run with log_config=None): ours instead, one format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # Its access log writes a line per request whenever that logger has a handler, ours through the root
    # included, whatever access_log says: RequestLog writes one instead (none for the hot routes). Left on,
    # it was a third of a webhook delivery's CPU at LOG_LEVEL=info (bench/).
    access = logging.getLogger("uvicorn.access")
    access.handlers, access.propagate = [], False
    # httpx logs each call at info with its full URL (one line per send to Meta, query strings too);
    # pgserver each command line it runs, many lines long. Their warnings still come through.
    for chatty in ("httpx", "pgserver"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in SECRET_FIELDS.intersection(event):
        event[name] = "[redacted]"
    return event


def note(**fields: Any) -> None:
    """Add fields to the line the current request will log (nothing outside a request)."""
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)


def noted() -> Mapping[str, Any]:
    """What `note` added to the current request's line so far (empty outside a request)."""
    return _notes.get() or {}


def request_id(scope: Scope) -> bytes:
    """The caller's X-Request-ID when well-formed, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and WELL_FORMED_ID.fullmatch(value):
            return bytes(value)
    return os.urandom(16).hex().encode()  # a uuid4's randomness, without building a UUID


class RequestLog:
    """Gives each HTTP request an id (bound to every line logged while it runs, echoed in the answer's
    X-Request-ID) and logs one line when it ends: method, route template (else the path), status,
    duration, the problem `code` of a refusal, the caller's key id. A success of a `quiet` endpoint is
    logged at debug only: the hot paths (an info line costs them a measured share of their throughput,
    README) and the probes a load balancer sends every few seconds."""

    def __init__(self, app: ASGIApp, quiet: Collection[object] = ()) -> None:
        self.app = app
        self.quiet = frozenset(quiet)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id(scope)
        status = 500
        notes: dict[str, Any] = {}
        notes_token = _notes.set(notes)
        rid_token = _request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (REQUEST_ID_HEADER, rid)]}
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_with_id)
            failed = False
        finally:
            route = scope.get("route")
            if failed or status >= 500:
                level = logging.ERROR if failed else logging.WARNING
            elif status < 400 and getattr(route, "endpoint", None) in self.quiet:
                level = logging.DEBUG
            else:
                level = logging.INFO
            if _level_of.isEnabledFor(level):
                path = getattr(route, "path", None) or scope["path"][:MAX_PATH]
                duration_ms = round((time.perf_counter() - start) * 1000, 2)
                log.log(level, "request", method=scope["method"], path=path, status=status,
                        duration_ms=duration_ms, **notes)  # fmt: skip
            _request_id.reset(rid_token)
            _notes.reset(notes_token)
