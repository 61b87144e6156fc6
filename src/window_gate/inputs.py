"""What the gate accepts of a request before any route sees it: one check instead of a validator per field.

PostgreSQL cannot store NUL in text, asyncpg cannot encode a lone surrogate, orjson (which writes every
body back out: to JSONB, to Meta) cannot write an integer beyond 64 bits or nest deeper than 254 levels.
Any of these reaching a statement was a 500. So a request is refused, 422 `validation_error`, with
nothing read by a route, nothing written and nothing sent, when

- its path, query string or a header holds a NUL (percent-encoded or not);
- its body is not strict JSON: orjson's reading (UTF-8 only, no lone surrogates, no NaN / Infinity,
  no BOM), plus no `\\u0000` in any string or key, no integer outside what orjson writes (-2**63 to
  2**64 - 1), no nesting deeper than MAX_DEPTH.

Bodies of declared raw routes (Meta's webhook: its signature is checked over the raw bytes before
anything is parsed, and a well-signed delivery is kept even when it cannot be applied; the Graph
pass-through's, which only Meta reads) and of media types that are not JSON (forms, CSV) are left to
their routes. Path and query strings need no surrogate check:
percent-decoding replaces bytes that are not UTF-8.
"""

import json
import re
from collections.abc import Callable, Collection
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from window_gate.errors import ValidationFailed

META_ID = r"^[0-9]{1,32}$"
"""Meta's object ids (business numbers, accounts): digits. Each one that goes into a Graph API path is
checked against this first: an empty or odd id would reach Meta (a 502) or another path of Meta's."""
MAX_DEPTH = 64  # Meta's deepest message bodies (template components) nest about 7 levels
INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_JSON = ("multipart/", "application/x-www-form-urlencoded", "text/csv")
# A \u0000 escape not itself escaped (an even run of backslashes before it).
NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# An integer orjson cannot write has 19 digits or more: where the body has digits, the translation has
# "1" (a regex for the run took a millisecond on a body of 1,000 phone numbers).
DIGITS_AS_ONES, LONG_INTEGER = bytes.maketrans(b"0123456789", b"1" * 10), b"1" * 19

Render = Callable[[str, ValidationFailed], Response]


def refused(where: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{where}: {message}", errors=[{"loc": [where], "msg": message, "type": where}])


def check_url(scope: Scope) -> None:
    """NUL anywhere in the path, the query string or a header value."""
    if "\x00" in scope["path"]:
        raise refused("path", "NUL (%00) is not accepted")
    query: bytes = scope["query_string"]
    if b"%00" in query or b"\x00" in query:
        raise refused("query", "NUL (%00) is not accepted")
    for name, value in scope["headers"]:
        if b"\x00" in value:
            raise refused("header", f"NUL is not accepted ({name.decode('latin-1')})")


def loads(raw: bytes) -> Any:
    """The body as JSON, read strictly (module docstring); ValidationFailed otherwise."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise refused("body", f"not JSON ({exc})") from None
    if b"\\u0000" in raw and NUL_ESCAPE.search(raw):
        raise refused("body", "NUL (\\u0000) is not accepted in a string")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and not _shallow(value):
        raise refused("body", f"nested deeper than {MAX_DEPTH} levels")
    # orjson reads an integer it cannot write as a float: the stdlib parser, rarely needed, says which.
    if LONG_INTEGER in raw.translate(DIGITS_AS_ONES):
        json.loads(raw, parse_int=_bounded_int)
    return value


def _bounded_int(literal: str) -> int:
    value = int(literal)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise refused("body", f"an integer out of range (-2^63 to 2^64-1): {literal[:24]}…")
    return value


def _shallow(value: Any) -> bool:
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return True
    return False


class InputCheck:
    """The checks of this module on every HTTP request, answered by `render` (path, error) when refused:
    the routes under /graph answer in Meta's shape. `raw_bodies`: paths whose bodies are left alone;
    `raw_paths`: the same, as a pattern."""

    def __init__(
        self,
        app: ASGIApp,
        render: Render,
        raw_bodies: Collection[str] = (),
        raw_paths: re.Pattern[str] | None = None,
    ) -> None:
        self.app = app
        self.render = render
        self.raw_bodies = frozenset(raw_bodies)
        self.raw_paths = raw_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_url(scope)
            if scope["method"] in BODY_METHODS and not self._raw(scope["path"]) and _json(scope):
                body = await _read(receive)
                if body is None:
                    return  # the client left before its body arrived: nothing to answer
                if body:
                    loads(body)
                receive = _replay(body, receive)
        except ValidationFailed as err:
            await self.render(scope["path"], err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _raw(self, path: str) -> bool:
        return path in self.raw_bodies or (self.raw_paths is not None and bool(self.raw_paths.match(path)))


def _json(scope: Scope) -> bool:
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"").decode("latin-1")
    return not content_type.lower().lstrip().startswith(NOT_JSON)


async def _read(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: the disconnect, when it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
