"""Every exception the gate raises on purpose, in one tree; add a new one here, in the tree too.

    Exception
    ├── GateError: a refusal or failure the caller can act on; a stable `code` and an HTTP status (the
    │   │          table in docs/errors.md is a contract), rendered as RFC 9457 problem+json by one handler;
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

from typing import Any, ClassVar, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from window_gate import logs

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://window-gate.dev/problems/"
MAX_ECHO = 200  # characters of one string a problem repeats: the input it quotes may be megabytes
K = TypeVar("K")


class GateError(Exception):
    """A refusal or failure the caller can act on: stable ``code``, HTTP status, explaining context."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    # (detail, context) of a typical instance: the OpenAPI document shows its problem() as the example of
    # this code (`problems`), so the example is what the handler would send.
    sample: ClassVar[tuple[str, dict[str, Any]]] = (
        "an unexpected error: report it with the X-Request-ID",
        {},
    )

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
    sample = (
        "body.phone_number_id: Field required",
        {"errors": [{"loc": ["body", "phone_number_id"], "msg": "Field required", "type": "missing"}]},
    )


class PayloadTooLarge(GateError):
    code, status, title = "payload_too_large", 413, "Request body is too large"
    sample = ("the body is larger than 3145728 bytes; nothing was written", {})


class InvalidRecipient(GateError):
    code, status, title = "invalid_recipient", 422, "Not a phone number or BSUID"
    sample = (
        "'+55 11 9876' is neither a phone number (7 to 15 digits, '+', spaces and dashes allowed) nor a BSUID",
        {"customer": "+55 11 9876"},
    )


class Undeliverable(GateError):
    code, status, title = "undeliverable", 422, "Meta cannot deliver to this customer"
    sample = (
        "Meta answered (131026) Message undeliverable: Message Undeliverable.",
        {
            "meta_error": {
                "error": {
                    "message": "(#131026) Message undeliverable",
                    "type": "OAuthException",
                    "code": 131026,
                    "error_data": {"messaging_product": "whatsapp", "details": "Message Undeliverable."},
                    "fbtrace_id": "AVCnGQ1aJx8Z3kKq7Xx2pXb",
                }
            },
            "meta_status": 400,
            "id": "5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13",
        },
    )


class Unauthorized(GateError):
    code, status, title = "unauthorized", 401, "Missing or invalid credentials"
    sample = ("unknown or revoked API key", {})

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail, **context)
        self.headers["WWW-Authenticate"] = "Bearer"


class Forbidden(GateError):
    code, status, title = "forbidden", 403, "Not allowed for this key"
    sample = ("this key has role 'read'; 'send' is needed", {"role": "read"})


class NotFound(GateError):
    code, status, title = "not_found", 404, "Not found"
    sample = ("no message 5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13", {})


class UnknownPhoneNumber(GateError):
    code, status, title = "unknown_phone_number", 404, "This phone number is not registered with the gate"
    sample = (
        "phone number 106540352242922 is not registered (ALLOW_LISTED_NUMBERS_ONLY): an admin registers it "
        "with PUT /v1/phone-numbers/{id}",
        {"phone_number_id": "106540352242922"},
    )


class EncryptionNotConfigured(GateError):
    code, status, title = (
        "encryption_not_configured",
        409,
        "No WINDOW_GATE_ENCRYPTION_KEY: access tokens cannot be stored",
    )
    sample = (
        "set WINDOW_GATE_ENCRYPTION_KEY (Fernet.generate_key()) to store access tokens; they are never "
        "stored in plain text",
        {},
    )


class DatabaseUnavailable(GateError):
    code, status, title = "database_unavailable", 503, "Window state cannot be read"
    sample = ("the database cannot be reached; nothing was decided (fail closed)", {})


class WindowClosed(GateError):
    code, status, title = "window_closed", 409, "Customer service window is not open"
    sample = (
        "free-form messages need an open window; it is expired: send an approved template",
        {
            "window": {
                "phone_number_id": "106540352242922",
                "customer": {"input": "+55 11 98765-4321", "wa_id": "5511987654321", "user_id": None},
                "state": "expired",
                "can_send_free_form": False,
                "last_inbound_at": "2026-11-24T10:00:00Z",
                "expires_at": "2026-11-25T10:00:00Z",
                "safe_until": "2026-11-25T09:59:00Z",
                "seconds_remaining": 0,
                "free_entry_point": None,
                "phone_number": None,
            },
            "hint": "send a template message (type `template`); only the customer's reply reopens the window",
        },
    )


class OptedOut(GateError):
    code, status, title = "opted_out", 409, "Customer stopped marketing messages"
    sample = (
        "the customer stopped marketing messages from this number (keyword, 2026-11-25T10:00:00+00:00); "
        "utility and authentication templates still pass",
        {
            "phone_number_id": "106540352242922",
            "customer": {"wa_id": "5511987654321", "user_id": None},
            "consent": {
                "opted_out": True,
                "source": "keyword",
                "changed_at": "2026-11-25T10:00:00Z",
                "category": "marketing",
            },
            "hint": "only the customer resumes marketing: WhatsApp settings, an opt-in keyword, or "
            "DELETE /v1/opt-outs/{phone_number_id}/{customer} when they asked you elsewhere",
        },
    )


class MarketingLimited(GateError):
    """Meta refused a marketing message to this customer for now (131049: the per-user marketing limit;
    130472: a marketing experiment). Other customers are not concerned: only this one waits."""

    code, status, title = "marketing_limited", 429, "Meta holds marketing messages to this customer"
    sample = (
        "Meta refused a marketing message to this customer (131049) at 2026-12-01T18:00:00+00:00: no "
        "marketing messages to them from this number before 2026-12-02T18:00:00+00:00; nothing was sent",
        {
            "retry_after": 23400,
            "phone_number_id": "106540352242922",
            "customer": {"wa_id": "5511987654321", "user_id": None},
            "retry_not_before": "2026-12-02T18:00:00+00:00",
            "hold": {
                "code": 131049,
                "since": "2026-12-01T18:00:00+00:00",
                "until": "2026-12-02T18:00:00+00:00",
            },
            "hint": "other customers are not concerned; utility and authentication templates still pass",
        },
    )

    def __init__(self, detail: str, retry_after: int = 86_400, **context: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **context)
        self.headers["Retry-After"] = str(retry_after)


class MarketingUnavailable(GateError):
    code, status, title = "marketing_unavailable", 409, "Marketing templates are not delivered there"
    sample = (
        "Meta does not deliver marketing templates to US numbers (since 2025-04-01); nothing was sent",
        {"country": "US", "effective_from": "2025-04-01"},
    )


class TemplateNotFound(GateError):
    code, status, title = "template_not_found", 422, "Template does not exist in that language"
    sample = (
        "template 'order_update' does not exist in language 'pt_BR'; it exists in en",
        {
            "template": {"name": "order_update", "language": "pt_BR"},
            "waba_id": "102290129340398",
            "languages": ["en"],
            "hint": "`GET /v1/templates` shows what the registry knows; `POST /v1/templates/sync` refreshes it "
            "from Meta",
        },
    )


class TemplateNotApproved(GateError):
    code, status, title = "template_not_approved", 422, "Template is not approved"
    sample = (
        "template 'order_update' (en) is PAUSED: LOW_QUALITY; only APPROVED templates can be sent",
        {
            "template": {"name": "order_update", "language": "en"},
            "waba_id": "102290129340398",
            "template_id": "1000000000000002",
            "template_status": "PAUSED",
            "reason": "LOW_QUALITY",
        },
    )


class TemplateParametersInvalid(GateError):
    code, status, title = "template_parameters_invalid", 422, "Template parameters do not match the template"
    sample = (
        "template 'order_update' (en): body: the template expects 2 parameters ({{1}}, {{2}}); 1 given: {{2}} is missing",
        {
            "template": {"name": "order_update", "language": "en"},
            "waba_id": "102290129340398",
            "template_id": "1000000000000002",
            "parameter_format": "POSITIONAL",
            "component": "body",
            "parameter": "{{2}}",
            "problems": [
                {
                    "component": "body",
                    "parameter": "{{2}}",
                    "detail": "body: the template expects 2 parameters ({{1}}, {{2}}); 1 given: {{2}} is missing",
                }
            ],
        },
    )


class BudgetExceeded(GateError):
    code, status, title = "budget_exceeded", 402, "The send would pass a monthly budget"
    sample = (
        "this send (about 0.062500 USD) would take the phone_number budget of 106540352242922 past 250.00 USD "
        "for 2026-12 (spent so far 249.980000); nothing was sent",
        {
            "scope": "phone_number",
            "scope_id": "106540352242922",
            "limit": "250.00",
            "spent": "249.980000",
            "amount": "0.062500",
            "currency": "USD",
            "month": "2026-12-01",
        },
    )


class IdempotencyConflict(GateError):
    code, status, title = "idempotency_conflict", 409, "Idempotency-Key reused with another body"
    sample = (
        "this Idempotency-Key was used with a different body",
        {"id": "5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13"},
    )


class RateLimited(GateError):
    code, status, title = "rate_limited", 429, "Throttled: retry later"
    sample = (
        "Meta answered (130429) Rate limit hit: Cloud API message throughput has been reached.",
        {
            "retry_after": 1,
            "meta_error": {
                "error": {
                    "message": "(#130429) Rate limit hit",
                    "type": "OAuthException",
                    "code": 130429,
                    "error_data": {
                        "messaging_product": "whatsapp",
                        "details": "Cloud API message throughput has been reached.",
                    },
                    "fbtrace_id": "A3hQ0yZf1pP2cW9vN7xR4sT",
                }
            },
            "meta_status": 400,
            "id": "5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13",
        },
    )

    def __init__(self, detail: str, retry_after: int = 1, **context: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **context)
        self.headers["Retry-After"] = str(retry_after)


class UpstreamError(GateError):
    code, status, title = "upstream_error", 502, "Meta refused or failed the request"
    sample = (
        "Meta could not be reached (All connection attempts failed); nothing was sent",
        {"id": "5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13"},
    )


class UpstreamConfiguration(GateError):
    """Meta refused because of how the business is set up (token, number registration, account locked or
    restricted): no retry can help until someone fixes it."""

    code, status, title = (
        "upstream_configuration",
        502,
        "Meta refused: the account, number or token needs fixing",
    )
    sample = (
        "Meta answered (190) Error validating access token: Session has expired on Tuesday, 01-Dec-26 "
        "09:00:00 PST.",
        {
            "meta_error": {
                "error": {
                    "message": "Error validating access token: Session has expired on Tuesday, 01-Dec-26 "
                    "09:00:00 PST.",
                    "type": "OAuthException",
                    "code": 190,
                    "error_subcode": 463,
                    "fbtrace_id": "AyV3m1pQx9T0fHs2kLw8rZc",
                }
            },
            "meta_status": 401,
            "id": "5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13",
        },
    )


class UpstreamTimeout(GateError):
    code, status, title = "upstream_timeout", 504, "No answer from Meta: outcome unknown, not re-sent"
    sample = (
        "no answer from Meta (ReadTimeout); the message may have left: it is not re-sent",
        {"id": "5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13"},
    )


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


def by_code() -> dict[str, type[GateError]]:
    """Every GateError by its code (those of the features too, once they are imported)."""
    return {kind.code: kind for kind in _subclasses(GateError)}


def replay(problem: dict[str, Any]) -> GateError:
    """A refusal stored earlier (idempotent replay), raised again with the same code and context."""
    kinds = by_code()
    context = {k: v for k, v in problem.items() if k not in {"type", "title", "status", "detail", "code"}}
    err = kinds.get(str(problem.get("code")), GateError)(str(problem.get("detail", "")), **context)
    err.headers.update({"Retry-After": str(context["retry_after"])} if "retry_after" in context else {})
    return err


def codes() -> frozenset[str]:
    """Every problem code the gate can answer with: its GateErrors' (those defined so far: call it once
    the app is built) and Starlette's HTTP errors'."""
    own = [GateError.code, *(kind.code for kind in _subclasses(GateError))]
    return frozenset({*own, *HTTP_CODES.values(), HTTP_ERROR})


def _subclasses(kind: type[K]) -> list[type[K]]:
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
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
            headers["Allow"] = ", ".join(_methods_on(request))
        return problem_response(exc.status_code, http_problem(exc), headers)

    _document_problems(app)


def http_problem(exc: StarletteHTTPException) -> dict[str, Any]:
    """The problem body of Starlette's own refusals (no such route, method or size)."""
    code = HTTP_CODES.get(exc.status_code, HTTP_ERROR)
    return {
        "type": TYPE_BASE + code,
        "title": str(exc.detail),
        "status": exc.status_code,
        "detail": str(exc.detail),
        "code": code,
    }


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
    under the route's media type (application/json, text/plain …) and adds its own 422 schema; both
    bodies really are problem+json."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        _examples_as_declared(app, spec)
        problem = {
            "schema": {"$ref": "#/components/schemas/Problem"},
            **problems(ValidationFailed)[422]["content"][PROBLEM_JSON],
        }
        for operation in (op for item in spec.get("paths", {}).values() for op in item.values()):
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                if schema.get("$ref", "").endswith("/HTTPValidationError"):
                    response["description"] = f"`{ValidationFailed.code}`: {ValidationFailed.title}"
                    content.pop("application/json")
                    content[PROBLEM_JSON] = problem
                elif PROBLEM_JSON in content:  # the model's schema, filed under the route's media type
                    for kind in [kind for kind in content if kind != PROBLEM_JSON]:
                        content[PROBLEM_JSON] = content.pop(kind) | content[PROBLEM_JSON]
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _examples_as_declared(app: FastAPI, spec: dict[str, Any]) -> None:
    """FastAPI renders its document without nulls (exclude_none), examples' nulls too, so an example of
    `"user_id": null` would lose a required field: put every example back as the routes and models
    declare it."""
    for route in iter_route_contexts(app.routes):  # included routers' routes too, with their prefixes
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                operation = spec["paths"][route.path_format][method.lower()]
                _overlay(operation, route.openapi_extra or {})
                for status, declared in route.responses.items():
                    _overlay(operation["responses"][str(status)], declared)
    schemas = spec.get("components", {}).get("schemas", {})
    for model in _subclasses(BaseModel):
        # FastAPI names a schema by its model, or by module and model when two models share a name.
        for name in (model.__name__, f"{model.__module__}.{model.__name__}".replace(".", "__")):
            if name in schemas and model.__module__.startswith("window_gate."):
                _overlay(schemas[name], model.model_json_schema())


def _overlay(rendered: dict[str, Any], declared: dict[str, Any]) -> None:
    for key, value in declared.items():
        if key in ("example", "examples"):
            rendered[key] = value
        elif isinstance(value, dict) and isinstance(rendered.get(key), dict):
            _overlay(rendered[key], value)


class Problem(BaseModel):
    """RFC 9457 problem details, plus a stable `code` and the context that explains it."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[TYPE_BASE + "window_closed"])
    title: str = Field(examples=["Customer service window is not open"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["the customer last wrote more than 24 h ago; send an approved template"])
    code: str = Field(description="Stable, snake_case: branch on this", examples=["window_closed"])


def problems(*errors: type[GateError] | GateError) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the refusals an endpoint may give, each code with its example: the
    problem of its `sample`, or of the instance given where the route's refusal says more."""
    out: dict[int | str, dict[str, Any]] = {}
    for given in dict.fromkeys(errors):
        err = type(given) if isinstance(given, GateError) else given
        entry = out.setdefault(
            err.status, {"model": Problem, "content": {PROBLEM_JSON: {"examples": {}}}, "description": ""}
        )
        entry["description"] = " · ".join(filter(None, [entry["description"], f"`{err.code}`: {err.title}"]))
        instance = given if isinstance(given, GateError) else err(err.sample[0], **err.sample[1])
        example = {"summary": err.title, "value": instance.problem()}
        entry["content"][PROBLEM_JSON]["examples"][err.code] = example
    return out


AUTH_PROBLEMS = (Unauthorized, Forbidden, ValidationFailed, DatabaseUnavailable)
