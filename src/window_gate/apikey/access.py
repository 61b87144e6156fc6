"""Who may call a route. Every /v1 and /graph route declares the role it needs through one `Access`,
and `create_app` refuses to start when a route under them declares none, so a new route cannot forget
its scope.

As a dependency (`Reader`, `Sender`, `Admin`), an Access authenticates the key, checks its role, and
checks every `phone_number_id` the request names in its path or query. What only the route can see (a
number in a body, a message's number, a budget's target, an account) it checks with the Caller's
scope rule (rules.py). The two routes that read their own headers (the hot window lookup, the Graph
pass-through answering in Meta's shapes) call `Access.caller` themselves and are marked with
`Access.declared`.
"""

import dataclasses
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from window_gate.apikey.rules import Caller, Role
from window_gate.apikey.service import AllowList, Authenticator
from window_gate.kit import Gate, gate

GUARDED_PREFIXES = ("/v1/", "/graph/")
NUMBER = "phone_number_id"
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class Bearer(HTTPBearer):
    """The `Authorization` header, declared as the OpenAPI bearer scheme (/docs' Authorize button) and
    handed on as sent: the Authenticator judges it, and each route refuses in its own shape (problem+json,
    or Meta's under /graph), as before the scheme was declared."""

    async def __call__(self, request: HTTPConnection) -> str | None:  # type: ignore[override]
        return request.headers.get("authorization")


BEARER = Bearer(
    scheme_name="bearer",
    bearerFormat="wg_ API key",
    description="A gate API key (`window-gate api-keys create`): `Authorization: Bearer wg_…`. "
    "Roles `read` ⊂ `send` ⊂ `admin`; a key may be limited to phone numbers.",
    auto_error=False,
)
SECURITY: list[dict[str, list[str]]] = [
    {BEARER.scheme_name: []}
]  # for the routes that read the header themselves (openapi_extra)
Authorization = Annotated[str | None, Security(BEARER)]


class Access:
    """A route's declaration of the role it needs (and, through the Caller, the objects it touches)."""

    def __init__(self, role: Role, *, registered_only: bool = True) -> None:
        self.role = role
        # False: the routes that register numbers (ALLOW_LISTED_NUMBERS_ONLY must not refuse them).
        self.registered_only = registered_only

    def __repr__(self) -> str:
        return f"Access({self.role.value})"

    async def __call__(self, request: Request, authorization: Authorization = None) -> Caller:
        numbers = [request.path_params.get(NUMBER), *request.query_params.getlist(NUMBER)]
        return await self.caller(gate(request), authorization, *numbers)

    async def caller(self, state: Gate, authorization: str | None, *numbers: str | None) -> Caller:
        """The key behind `authorization`, if it has the role and may use each of these numbers:
        401 unauthorized, else 403 forbidden."""
        caller = await state.part(Authenticator).caller(authorization)
        if self.registered_only and (registered := await state.part(AllowList).numbers()) is not None:
            caller = dataclasses.replace(caller, registered=registered)
        caller.require(self.role)
        for phone_number_id in numbers:
            if phone_number_id is not None:
                caller.require_number(phone_number_id)
        return caller

    def declared(self, endpoint: Endpoint) -> Endpoint:
        """Marks an endpoint that calls `self.caller` itself instead of taking it as a dependency."""
        _SELF_CHECKED[endpoint] = self
        return endpoint


_SELF_CHECKED: dict[Callable[..., Any], Access] = {}
READ, SEND, ADMIN = Access(Role.READ), Access(Role.SEND), Access(Role.ADMIN)
REGISTRAR = Access(Role.ADMIN, registered_only=False)
Reader = Annotated[Caller, Depends(READ)]
Sender = Annotated[Caller, Depends(SEND)]
Admin = Annotated[Caller, Depends(ADMIN)]
Registrar = Annotated[Caller, Depends(REGISTRAR)]  # an admin, on any number: /v1/phone-numbers


def declared(route: APIRoute | RouteContext) -> Access | None:
    """The Access a route declared: a dependency anywhere in its tree, or the endpoint's mark."""
    marked = _SELF_CHECKED.get(route.endpoint) if route.endpoint is not None else None
    return marked if marked is not None else _in(route.dependant)


def _in(dependant: Dependant) -> Access | None:
    for sub in dependant.dependencies:
        if isinstance(sub.call, Access):
            return sub.call
        if (found := _in(sub)) is not None:
            return found
    return None


def api_routes(routes: Iterable[BaseRoute]) -> list[RouteContext]:
    """The app's API routes as served (FastAPI 0.165 keeps included routers, not their routes, in
    app.routes), each with its full path."""
    return [r for r in iter_route_contexts(list(routes)) if isinstance(r.original_route, APIRoute)]


def undeclared(routes: Iterable[BaseRoute]) -> list[str]:
    """Routes under /v1 or /graph without an Access: create_app refuses to start with any."""
    return [
        f"{','.join(sorted(route.methods or ()))} {route.path}"
        for route in api_routes(routes)
        if str(route.path).startswith(GUARDED_PREFIXES) and declared(route) is None
    ]
