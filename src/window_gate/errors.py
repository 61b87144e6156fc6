"""Every exception the gate raises on purpose, in one tree; add a new one here, in the tree too.

    Exception
    ├── GateError: a refusal or failure the caller can act on; a stable `code` and an HTTP status (the
    │   │          table in DESIGN.md is a contract), rendered as RFC 9457 problem+json by one handler;
    │   │          raised itself, 500 internal_error: what should not happen
    │   ├── ValidationFailed ············ 422 validation_error
    │   ├── PayloadTooLarge ············· 413 payload_too_large
    │   ├── InvalidRecipient ············ 422 invalid_recipient: not a phone number or BSUID (or one Meta refuses)
    │   ├── Undeliverable ··············· 422 undeliverable: Meta cannot reach the customer (131026): not re-sent
    │   ├── Unauthorized ················ 401 unauthorized
    │   ├── Forbidden ··················· 403 forbidden
    │   ├── NotFound ···················· 404 not_found
    │   ├── UnknownPhoneNumber ·········· 404 unknown_phone_number: ALLOW_LISTED_NUMBERS_ONLY and not registered
    │   ├── EncryptionNotConfigured ····· 409 encryption_not_configured: a token to store, no ENCRYPTION_KEY
    │   ├── DatabaseUnavailable ········· 503 database_unavailable: nothing was decided (fail closed)
    │   ├── WindowClosed ················ 409 window_closed
    │   ├── OptedOut ···················· 409 opted_out
    │   ├── MarketingLimited ············ 429 marketing_limited: Meta holds marketing to this customer; Retry-After
    │   ├── MarketingUnavailable ········ 409 marketing_unavailable: Meta does not deliver marketing there
    │   ├── TemplateNotFound ············ 422 template_not_found
    │   ├── TemplateNotApproved ········· 422 template_not_approved
    │   ├── TemplateParametersInvalid ··· 422 template_parameters_invalid
    │   ├── BudgetExceeded ·············· 402 budget_exceeded
    │   ├── IdempotencyConflict ········· 409 idempotency_conflict
    │   ├── RateLimited ················· 429 rate_limited, with Retry-After
    │   ├── UpstreamError ··············· 502 upstream_error: Meta refused or failed it, or was unreachable
    │   ├── UpstreamConfiguration ······· 502 upstream_configuration: the account, number or token needs fixing
    │   ├── UpstreamTimeout ············· 504 upstream_timeout: a send's outcome is unknown; never re-sent
    │   ├── VerificationFailed ·········· 403 verification_failed (webhook/endpoints.py: only it raises it)
    │   └── NotMigrated ················· 503 not_migrated (health/endpoints.py: only it raises it)
    └── GraphFailure: a call to Meta's Graph API gave no usable answer (graph/client.py raises these; the
        │             services turn them into GateErrors: none reaches a caller as it is)
        ├── GraphError: Meta answered with its error object; branch on `code` (graph/reactions.py)
        ├── GraphUnreachable: no connection (httpx's ConnectError, ConnectTimeout, PoolTimeout), retries
        │                     included: the request surely did not leave
        └── GraphOutcomeUnknown: the request may have reached Meta, and whether Meta acted is unknown
            ├── GraphNoAnswer: any other transport failure (ReadTimeout, a dropped connection, …)
            └── GraphUnreadable: Meta answered, but nothing the gate can use (not a JSON object, no end)

Errors of start-up and of the bundled data (config.SettingsError, pricing.rules.PricingDataError) stop the
process with one line; they are not answers, so they are not in the tree.
"""

from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from window_gate import logs

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://window-gate.dev/problems/"
MAX_ECHO = 200  # characters of one string a problem repeats: the input it quotes may be megabytes


class GateError(Exception):
    """A refusal or failure the caller can act on: stable ``code``, HTTP status, explaining context."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.context = context
        self.headers: dict[str, str] = {}

    def problem(self) -> dict[str, Any]:
        """The problem body. Every string in it is clipped to MAX_ECHO characters (head … tail), but
        `meta_error`: Meta's own words, passed on whole."""
        context = {k: v if k == "meta_error" else clip(v) for k, v in self.context.items()}
        return {
            "type": TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": clip(self.detail),
            "code": self.code,
            **context,
        }


def clip(value: Any) -> Any:
    """Strings over MAX_ECHO characters, however deep in lists and dicts, cut to their head and tail."""
    if isinstance(value, str):
        if len(value) <= MAX_ECHO:
            return value
        return value[: MAX_ECHO // 2] + "…" + value[len(value) - MAX_ECHO // 2 + 1 :]
    if isinstance(value, dict):
        return {k: clip(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clip(v) for v in value]
    return value


class ValidationFailed(GateError):
    code, status, title = "validation_error", 422, "Request is not valid"


class PayloadTooLarge(GateError):
    code, status, title = "payload_too_large", 413, "Request body is too large"


class InvalidRecipient(GateError):
    code, status, title = "invalid_recipient", 422, "Not a phone number or BSUID"


class Undeliverable(GateError):
    code, status, title = "undeliverable", 422, "Meta cannot deliver to this customer"


class Unauthorized(GateError):
    code, status, title = "unauthorized", 401, "Missing or invalid credentials"

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail, **context)
        self.headers["WWW-Authenticate"] = "Bearer"


class Forbidden(GateError):
    code, status, title = "forbidden", 403, "Not allowed for this key"


class NotFound(GateError):
    code, status, title = "not_found", 404, "Not found"


class UnknownPhoneNumber(GateError):
    code, status, title = "unknown_phone_number", 404, "This phone number is not registered with the gate"


class EncryptionNotConfigured(GateError):
    code, status, title = (
        "encryption_not_configured",
        409,
        "No WINDOW_GATE_ENCRYPTION_KEY: access tokens cannot be stored",
    )


class DatabaseUnavailable(GateError):
    code, status, title = "database_unavailable", 503, "Window state cannot be read"


class WindowClosed(GateError):
    code, status, title = "window_closed", 409, "Customer service window is not open"


class OptedOut(GateError):
    code, status, title = "opted_out", 409, "Customer stopped marketing messages"


class MarketingLimited(GateError):
    """Meta refused a marketing message to this customer for now (131049: the per-user marketing limit;
    130472: a marketing experiment). Other customers are not concerned: only this one waits."""

    code, status, title = "marketing_limited", 429, "Meta holds marketing messages to this customer"

    def __init__(self, detail: str, retry_after: int = 86_400, **context: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **context)
        self.headers["Retry-After"] = str(retry_after)


class MarketingUnavailable(GateError):
    code, status, title = "marketing_unavailable", 409, "Marketing templates are not delivered there"


class TemplateNotFound(GateError):
    code, status, title = "template_not_found", 422, "Template does not exist in that language"


class TemplateNotApproved(GateError):
    code, status, title = "template_not_approved", 422, "Template is not approved"


class TemplateParametersInvalid(GateError):
    code, status, title = "template_parameters_invalid", 422, "Template parameters do not match the template"


class BudgetExceeded(GateError):
    code, status, title = "budget_exceeded", 402, "The send would pass a monthly budget"


class IdempotencyConflict(GateError):
    code, status, title = "idempotency_conflict", 409, "Idempotency-Key reused with another body"


class RateLimited(GateError):
    code, status, title = "rate_limited", 429, "Throttled: retry later"

    def __init__(self, detail: str, retry_after: int = 1, **context: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **context)
        self.headers["Retry-After"] = str(retry_after)


class UpstreamError(GateError):
    code, status, title = "upstream_error", 502, "Meta refused or failed the request"


class UpstreamConfiguration(GateError):
    """Meta refused because of how the business is set up (token, number registration, account locked or
    restricted): no retry can help until someone fixes it."""

    code, status, title = (
        "upstream_configuration",
        502,
        "Meta refused: the account, number or token needs fixing",
    )


class UpstreamTimeout(GateError):
    code, status, title = "upstream_timeout", 504, "No answer from Meta: outcome unknown, not re-sent"


class GraphFailure(Exception):
    """A call to Meta's Graph API gave no usable answer."""


class GraphError(GraphFailure):
    """Meta's `{"error": {...}}`, parsed. Branch on `code`, never on the text."""

    def __init__(
        self,
        http_status: int,
        code: int | None,
        message: str,
        *,
        type: str | None = None,
        subcode: int | None = None,
        details: str | None = None,
        fbtrace_id: str | None = None,
        raw: dict[str, Any] | None = None,
        regain_seconds: int | None = None,
    ) -> None:
        super().__init__(f"({code}) {message}")
        self.http_status = http_status
        self.code = code
        self.message = message
        self.type = type
        self.subcode = subcode
        self.details = details
        self.fbtrace_id = fbtrace_id
        self.raw = raw or {}
        self.regain_seconds = regain_seconds  # Meta's estimate of when a throttled caller may call again


class GraphUnreachable(GraphFailure):
    """No connection could be made, retries included: the request surely did not leave."""


class GraphOutcomeUnknown(GraphFailure):
    """The request may have reached Meta: whether Meta acted on it is unknown, so it is never re-sent."""


class GraphNoAnswer(GraphOutcomeUnknown):
    """The connection failed or timed out once the request could have been sent."""


class GraphUnreadable(GraphOutcomeUnknown):
    """Meta answered, but nothing the gate can use: not a JSON object, a listing without `data` or end."""


def replay(problem: dict[str, Any]) -> GateError:
    """A refusal stored earlier (idempotent replay), raised again with the same code and context."""
    kinds = {kind.code: kind for kind in _subclasses(GateError)}
    context = {k: v for k, v in problem.items() if k not in {"type", "title", "status", "detail", "code"}}
    err = kinds.get(str(problem.get("code")), GateError)(str(problem.get("detail", "")), **context)
    err.headers.update({"Retry-After": str(context["retry_after"])} if "retry_after" in context else {})
    return err


def codes() -> frozenset[str]:
    """Every problem code the gate can answer with: its GateErrors' (those defined so far: call it once
    the app is built) and Starlette's HTTP errors'."""
    own = [GateError.code, *(kind.code for kind in _subclasses(GateError))]
    return frozenset({*own, *HTTP_CODES.values(), HTTP_ERROR})


def _subclasses(kind: type[GateError]) -> list[type[GateError]]:
    return [sub for direct in kind.__subclasses__() for sub in (direct, *_subclasses(direct))]


def problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    logs.note(code=body.get("code"))  # the request's log line says which refusal it was
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


# Starlette's HTTP errors (a path no route has, a method it does not answer, …) by status, and the rest.
HTTP_ERROR = "http_error"
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def validation_failed(exc: RequestValidationError) -> ValidationFailed:
    """FastAPI's refusal of a parameter or body as the gate's: each error's place, message and type
    (not pydantic's `input`: it may be the whole body)."""
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return ValidationFailed(f"{where}: {first['msg']}" if where else str(first["msg"]), errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as problem+json with a stable ``code``."""

    # Registered through the decorator: it keeps each handler's own exception type (Starlette calls a
    # handler only with instances of the class it was registered for).
    @app.exception_handler(GateError)
    async def gate_error(_: Request, exc: GateError) -> Response:
        return problem_response(exc.status, exc.problem(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        err = validation_failed(exc)
        return problem_response(err.status, err.problem())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, HTTP_ERROR)
        body = {
            "type": TYPE_BASE + code,
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
            "code": code,
        }
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
            headers["Allow"] = ", ".join(_methods_on(request))
        return problem_response(exc.status_code, body, headers)

    _document_problems(app)


def _methods_on(request: Request) -> list[str]:
    """The methods some route answers on this path, asked of the routes themselves (FastAPI's included
    routers hold theirs out of sight)."""
    routes = request.app.router.routes
    return [
        method
        for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def _document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers above send. FastAPI files a `responses` model
    under application/json and adds its own 422 schema; both bodies really are problem+json."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
        for operation in (op for item in spec.get("paths", {}).values() for op in item.values()):
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                if schema.get("$ref", "").endswith("/HTTPValidationError"):
                    response["description"] = f"`{ValidationFailed.code}`: {ValidationFailed.title}"
                    content.pop("application/json")
                    content[PROBLEM_JSON] = problem
                elif PROBLEM_JSON in content and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


class Problem(BaseModel):
    """RFC 9457 problem details, plus a stable `code` and the context that explains it."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[TYPE_BASE + "window_closed"])
    title: str = Field(examples=["Customer service window is not open"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["the customer last wrote more than 24 h ago; send an approved template"])
    code: str = Field(description="Stable, snake_case: branch on this", examples=["window_closed"])


def problems(*errors: type[GateError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the refusals an endpoint may give."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        entry = out.setdefault(
            err.status, {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": ""}
        )
        entry["description"] = " · ".join(filter(None, [entry["description"], f"`{err.code}`: {err.title}"]))
    return out


AUTH_PROBLEMS = (Unauthorized, Forbidden, ValidationFailed, DatabaseUnavailable)
