"""HTTP: the rest of Meta's Graph API under /graph, passed through with the number's token. Bodies are
streamed both ways, never read by the gate; JSON answers are read only to point their URLs at the gate."""

import dataclasses
import re
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any

import httpx
import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.convertors import PathConvertor, StringConvertor, register_url_convertor
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from window_gate.apikey.access import ADMIN, READ, SEND, Access, Authorization
from window_gate.apikey.rules import Caller
from window_gate.crypto import Sealer
from window_gate.errors import (
    PROBLEM_JSON,
    GateError,
    GraphFailure,
    PayloadTooLarge,
    Problem,
    ValidationFailed,
    http_problem,
)
from window_gate.inputs import META_ID
from window_gate.kit import Gate, gate
from window_gate.message.endpoints import (
    INVALID_PARAMETER,
    META_SHAPES,
    as_meta_error,
    meta_examples,
    meta_passed_on,
)
from window_gate.message.schemas import GraphErrorOut
from window_gate.message.service import verdict
from window_gate.passthrough import service
from window_gate.passthrough.service import Kind, Links, Target
from window_gate.window.schemas import EXAMPLE_PN


class _GraphVersion(StringConvertor):
    regex = r"v[0-9]+\.[0-9]+"


class _Edge(PathConvertor):
    """Meta's edges, but `messages`: what only the gated POST route serves is no route at all here, so
    another method there is 405 with that route's `Allow`."""

    regex = r"(?!messages(?:/|$))[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)*"


# Matched while routing: `/graph/media/{id}` is the download, not a Graph object of version "media".
register_url_convertor("graph_version", _GraphVersion())
register_url_convertor("graph_edge", _Edge())
router = APIRouter(prefix="/graph", tags=["graph pass-through"])

# The paths whose bodies only Meta reads (no JSON check, MAX_UPLOAD_BYTES): all but the gated /messages.
PROXIED = re.compile(r"^/graph/v\d+\.\d+/[^/]+(?!/messages/?$)(?:/.*)?$")
EDGE = r"^[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)*$"
EXAMPLE_MEDIA = "1037543291543636"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never sent to Meta: the caller's key (Meta gets the number's token), its cookies; answers come unencoded,
# so that the gate can read a JSON answer whatever the caller accepts.
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "cookie", "accept-encoding"}

Version = Annotated[str, Path(pattern=r"^v\d+\.\d+$", description="Graph API version", examples=["v25.0"])]
Node = Annotated[
    str,
    Path(
        pattern=META_ID,
        description="A Graph object id: a business number, a WhatsApp Business Account, a media id …",
        examples=[EXAMPLE_PN],
    ),
]
Edge = Annotated[
    str, Path(pattern=EDGE, description="Meta's edge, e.g. `media`, `message_templates`", examples=["media"])
]
MediaId = Annotated[str, Path(pattern=META_ID, description="Meta's media id", examples=[EXAMPLE_MEDIA])]
PhoneNumberId = Annotated[
    str | None,
    Query(
        pattern=META_ID,
        description="For media: the number it belongs to (Meta answers only then); a key limited to several "
        "numbers must name one",
        examples=[EXAMPLE_PN],
    ),
]
AccessToken = Annotated[
    str | None,
    Query(description="The gate API key, where a Graph client sends its token in the query; never passed on"),
]


def _responses(success: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The gate's own refusals in Meta's shape, and whatever Meta answers (`default`). `success`: the
    200's content."""
    own = {"validation_error": INVALID_PARAMETER} | {
        code: META_SHAPES[code]
        for code in (
            "unauthorized",
            "forbidden",
            "payload_too_large",
            "database_unavailable",
            "upstream_error",
            "upstream_timeout",
        )
    }
    examples = meta_examples(*own)
    errors: dict[int | str, dict[str, Any]] = {
        status: {
            "model": GraphErrorOut,
            "description": f"Meta's error shape: {meta_code} {message} (the gate's `{code}`); or Meta's own",
            "content": {"application/json": {"examples": examples[status]}},
        }
        for code, (status, meta_code, message) in sorted(own.items(), key=lambda i: i[1][0])
    }
    no_route = http_problem(StarletteHTTPException(404))
    errors[404] = {
        "model": Problem,
        "content": {
            PROBLEM_JSON: {"examples": {"not_found": {"summary": "No such route", "value": no_route}}}
        },
        "description": "`not_found`: no such route (a version that is not vN.N, an edge Meta has not)",
    }
    errors["default"] = {
        "model": GraphErrorOut,
        "description": "Meta's own error, with Meta's HTTP status",
        "content": {"application/json": {"examples": meta_passed_on()}},
    }
    return {200: {"description": "Meta's own answer", "content": success}, **errors}


def _answers(**examples: tuple[str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """`_responses` for a JSON answer of Meta's, with these named examples (summary, value)."""
    named = {name: {"summary": summary, "value": value} for name, (summary, value) in examples.items()}
    return _responses({"application/json": {"schema": {"type": "object"}, "examples": named}})


GATE = "https://gate.example.com"  # WINDOW_GATE_PUBLIC_URL, as the examples' links show it
DONE = ("Meta's answer", {"success": True})
MEDIA_BYTES = _responses({"*/*": {}})
ANY_BODY = {
    "requestBody": {
        "required": False,
        "content": {"*/*": {"schema": {}, "example": {"pin": "123456"}}},  # the number's two-step PIN
    }
}
UPLOAD_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "messaging_product": {"type": "string", "example": "whatsapp"},
                        "type": {"type": "string", "example": "image/jpeg"},
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            },
            "*/*": {
                "schema": {},
                # POST /{phone_number_id}/whatsapp_business_profile
                "example": {"messaging_product": "whatsapp", "about": "Orders answered 8 am to 8 pm"},
            },
        },
    }
}


@router.get(
    "/media/{media_id}",
    summary="Download a media object (the link the gate puts in place of Meta's)",
    status_code=200,
    response_class=Response,
    responses=MEDIA_BYTES,
)
@READ.declared
async def download_media(
    request: Request,
    media_id: MediaId,
    phone_number_id: PhoneNumberId = None,
    authorization: Authorization = None,
    access_token: AccessToken = None,
) -> Response:
    """The bytes of a media object, streamed from Meta's CDN with the number's token. `GET
    /graph/{version}/{media_id}` answers this link as the media's `url` (Meta's own URL needs Meta's
    token, which callers do not have); the gate looks the media up again, so the link does not expire.
    Same rules as that call: role `read`; a key limited to numbers only for its numbers' media."""
    state = gate(request)
    try:
        caller = await READ.caller(state, _credential(authorization, access_token))
        target = await _target(state, caller=caller, method="GET", node=media_id, edge=None, request=request)
        info = await state.graph.media(media_id, target.phone_number_id, target.token)
        if not service.is_media(info):
            raise ValidationFailed(f"{media_id} is not a media object")
        upstream = await state.graph.stream(
            "GET", str(info["url"]), token=target.token, headers=[("accept-encoding", "identity")]
        )
    except GateError as err:
        return as_meta_error(err)
    except GraphFailure as exc:
        return as_meta_error(verdict(exc)[1])
    return _streamed(upstream)


@router.get(
    "/{version:graph_version}/{node}",
    summary="Read a Graph object: the number's fields, a media object, an account",
    status_code=200,
    response_class=Response,
    responses=_answers(
        number=(
            "A business number's fields",
            {
                "verified_name": "Acme Shop",
                "display_phone_number": "+1 555-000-1111",
                "quality_rating": "GREEN",
                "id": EXAMPLE_PN,
            },
        ),
        media=(
            "A media object: its url is the gate's download link",
            {
                "messaging_product": "whatsapp",
                "url": f"{GATE}/graph/media/{EXAMPLE_MEDIA}?phone_number_id={EXAMPLE_PN}",
                "mime_type": "image/jpeg",
                "sha256": "4f6a1c8b2e9d7f3a5c0b8e1d6f2a9c4b7e3d0f5a8c1b6e9d2f7a4c0b5e8d3f1a",
                "file_size": 303833,
                "id": EXAMPLE_MEDIA,
            },
        ),
    ),
)
@READ.declared
async def read_object(
    request: Request,
    version: Version,
    node: Node,
    phone_number_id: PhoneNumberId = None,
    authorization: Authorization = None,
    access_token: AccessToken = None,
) -> Response:
    """Meta's `GET /{version}/{id}` with the object's token (role `read`). A media object's `url` becomes
    the gate's download link (`/graph/media/{id}`). A key limited to numbers reads its numbers, their
    accounts, and media of its numbers (`phone_number_id`, implied when it has one number)."""
    return await _pass(request, READ, version, node, None, authorization, access_token)


@router.post(
    "/{version:graph_version}/{node}",
    summary="Update a Graph object (the number's settings …)",
    status_code=200,
    response_class=Response,
    responses=_answers(done=DONE),
    openapi_extra=ANY_BODY,
)
@ADMIN.declared
async def write_object(
    request: Request,
    version: Version,
    node: Node,
    authorization: Authorization = None,
    access_token: AccessToken = None,
) -> Response:
    """Meta's `POST /{version}/{id}`, body streamed as sent (role `admin`)."""
    return await _pass(request, ADMIN, version, node, None, authorization, access_token)


@router.delete(
    "/{version:graph_version}/{node}",
    summary="Delete a media object",
    status_code=200,
    response_class=Response,
    responses=_answers(done=DONE),
)
@SEND.declared
async def delete_object(
    request: Request,
    version: Version,
    node: Node,
    phone_number_id: PhoneNumberId = None,
    authorization: Authorization = None,
    access_token: AccessToken = None,
) -> Response:
    """Meta's `DELETE /{version}/{media_id}` (role `send`; other objects `admin`). A key limited to numbers
    deletes only media of its numbers: the gate asks Meta first."""
    return await _pass(request, SEND, version, node, None, authorization, access_token)


@router.get(
    "/{version:graph_version}/{node}/{edge:graph_edge}",
    summary="Read an edge: templates, the business profile, QR codes, phone numbers …",
    status_code=200,
    response_class=Response,
    responses=_answers(
        templates=(
            "An account's message_templates: paging.next points at the gate",
            {
                "data": [
                    {
                        "name": "order_update",
                        "parameter_format": "POSITIONAL",
                        "components": [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped."}],
                        "language": "en",
                        "status": "APPROVED",
                        "category": "UTILITY",
                        "id": "1000000000000002",
                    }
                ],
                "paging": {
                    "cursors": {"before": "MAZDZD", "after": "MjQZD"},
                    "next": f"{GATE}/graph/v25.0/102290129340398/message_templates?limit=25&after=MjQZD",
                },
            },
        )
    ),
)
@READ.declared
async def read_edge(
    request: Request,
    version: Version,
    node: Node,
    edge: Edge,
    authorization: Authorization = None,
    access_token: AccessToken = None,
) -> Response:
    """Meta's `GET /{version}/{id}/{edge}` (role `read`), with the number's token, or for an account
    (`/{waba_id}/message_templates`) the token of one of its numbers. `paging.next` links point at the gate."""
    return await _pass(request, READ, version, node, edge, authorization, access_token)


@router.post(
    "/{version:graph_version}/{node}/{edge:graph_edge}",
    summary="Upload media; write an edge (templates, profile, QR codes …)",
    status_code=200,
    response_class=Response,
    responses=_answers(media=("An upload: the media's id", {"id": EXAMPLE_MEDIA}), done=DONE),
    openapi_extra=UPLOAD_BODY,
)
@SEND.declared
async def write_edge(
    request: Request,
    version: Version,
    node: Node,
    edge: Edge,
    authorization: Authorization = None,
    access_token: AccessToken = None,
) -> Response:
    """Meta's `POST /{version}/{id}/{edge}`, the body (a multipart upload) streamed to Meta as it comes.
    `/{phone_number_id}/media` needs role `send`; every other write `admin`. Edges that send
    (`messages` is the gated route; `marketing_messages`) are refused."""
    return await _pass(request, SEND, version, node, edge, authorization, access_token)


@router.delete(
    "/{version:graph_version}/{node}/{edge:graph_edge}",
    summary="Delete through an edge: a template by name, a QR code …",
    status_code=200,
    response_class=Response,
    responses=_answers(done=DONE),
)
@ADMIN.declared
async def delete_edge(
    request: Request,
    version: Version,
    node: Node,
    edge: Edge,
    authorization: Authorization = None,
    access_token: AccessToken = None,
) -> Response:
    """Meta's `DELETE /{version}/{id}/{edge}` (role `admin`)."""
    return await _pass(request, ADMIN, version, node, edge, authorization, access_token)


async def _pass(
    request: Request,
    access: Access,
    version: str,
    node: str,
    edge: str | None,
    authorization: str | None,
    access_token: str | None,
) -> Response:
    """One call passed to Meta and its answer handed back. `access` is the least role of the route; the
    call's own (by object and method) is checked by `service.target`."""
    state, method = gate(request), request.method
    try:
        caller = await access.caller(state, _credential(authorization, access_token))
        target = await _target(state, caller=caller, method=method, node=node, edge=edge, request=request)
        if target.media_only and method == "DELETE":
            service.refuse_unless_media(
                target, await state.graph.media(node, target.phone_number_id, target.token)
            )
        upstream = await state.graph.stream(
            method,
            f"/{version}/{node}" + (f"/{edge}" if edge else ""),
            token=target.token,
            params=target.params,
            headers=_forwarded(request.headers),
            content=request.stream() if _has_body(request.headers) else None,
        )
        if not _is_json(upstream.headers):
            if target.media_only and method == "GET":  # what it is cannot be told unread: not passed
                await upstream.aclose()
                service.refuse_unless_media(target, None)
            return _streamed(upstream)
        try:
            raw = await upstream.aread()
        finally:
            await upstream.aclose()
        body = _handed_back(state, request, target, method, upstream.status_code, raw, access_token)
    except GateError as err:
        return as_meta_error(err)
    except GraphFailure as exc:
        return as_meta_error(verdict(exc)[1])
    except StarletteHTTPException as exc:  # the body passed MAX_UPLOAD_BYTES on its way to Meta
        if exc.status_code != PayloadTooLarge.status:
            raise
        return as_meta_error(PayloadTooLarge(str(exc.detail)))
    headers = _returned(upstream.headers, dropped={"content-length", "content-encoding"})
    return Response(body, status_code=upstream.status_code, headers=headers)


async def _target(
    state: Gate, *, caller: Caller, method: str, node: str, edge: str | None, request: Request
) -> Target:
    async with state.autocommit.connect() as conn:
        target = await service.target(
            conn, state.settings, caller, method, node, edge, request.query_params.multi_items()
        )
    return dataclasses.replace(target, token=state.part(Sealer).open(target.token))


def _handed_back(
    state: Gate,
    request: Request,
    target: Target,
    method: str,
    status: int,
    raw: bytes,
    credential: str | None,
) -> bytes:
    """Meta's JSON answer with its Graph URLs pointed at the gate, a media `url` at the gate's download
    link, and no token of Meta's in it."""
    public = state.settings.public_url or str(request.base_url)
    links = Links(state.settings.graph_base_url, public.rstrip("/"), credential)
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return service.scrubbed(raw, target.token, state.graph.default_token)
    if status < 400 and method == "GET" and target.kind is Kind.OTHER:
        service.refuse_unless_media(target, answer)
        if service.is_media(answer):
            answer = {**answer, "url": links.media(target.node, target.phone_number_id)}
    body = orjson.dumps(links.rewritten(answer))
    return service.scrubbed(body, target.token, state.graph.default_token)


def _credential(authorization: str | None, access_token: str | None) -> str | None:
    return authorization or (f"Bearer {access_token}" if access_token else None)


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _is_json(headers: httpx.Headers) -> bool:
    kind = headers.get("content-type", "").lower()
    return "json" in kind or kind.startswith("text/javascript")  # Meta labels some JSON answers so


def _named_in_connection(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def _forwarded(headers: Headers) -> list[tuple[str, str]]:
    dropped = NOT_FORWARDED | _named_in_connection(headers.get("connection", ""))
    return [*((k, v) for k, v in headers.items() if k not in dropped), ("accept-encoding", "identity")]


def _returned(headers: httpx.Headers, dropped: Iterable[str] = ()) -> dict[str, str]:
    gone = HOP_BY_HOP | _named_in_connection(headers.get("connection", "")) | set(dropped)
    return {k: v for k, v in headers.multi_items() if k.lower() not in gone}


def _streamed(upstream: httpx.Response) -> Response:
    """Meta's answer as it comes, bytes unread; the connection to Meta freed at the end, or when the caller
    goes away."""

    async def body() -> AsyncIterator[bytes]:
        try:
            if upstream.is_stream_consumed:  # a transport that read it all already (a test double)
                yield upstream.content
                return
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(
        body(),
        status_code=upstream.status_code,
        headers=_returned(upstream.headers),
        background=BackgroundTask(upstream.aclose),
    )
