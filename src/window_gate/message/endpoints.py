"""HTTP: gated sends (by body, and templates by name), their records, and the Graph-compatible
pass-through."""

import secrets
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Header, Path, Request
from fastapi.responses import JSONResponse, Response

from window_gate import errors, inputs, logs
from window_gate.apikey.access import SEND, Authorization, Reader, Sender
from window_gate.customer.identity import parse_customer
from window_gate.errors import (
    AUTH_PROBLEMS,
    BudgetExceeded,
    GateError,
    IdempotencyConflict,
    InvalidRecipient,
    MarketingLimited,
    MarketingUnavailable,
    NotFound,
    OptedOut,
    RateLimited,
    TemplateNotApproved,
    TemplateNotFound,
    TemplateParametersInvalid,
    Undeliverable,
    UpstreamConfiguration,
    UpstreamError,
    UpstreamTimeout,
    ValidationFailed,
    WindowClosed,
    problems,
)
from window_gate.inputs import META_ID
from window_gate.kit import gate, json_response
from window_gate.message import held, repository, service
from window_gate.message.schemas import (
    EXAMPLE_RECIPIENT,
    EXAMPLE_WAMID,
    CancelledOut,
    ContinuationOut,
    ConversationOut,
    EventOut,
    GraphErrorOut,
    HeldOut,
    MessageOut,
    RecipientOut,
    SendIn,
    SendOut,
)
from window_gate.template import service as templates
from window_gate.template.schemas import TemplateSendIn
from window_gate.window import service as window_service
from window_gate.window.rule import Policy
from window_gate.window.schemas import EXAMPLE_PN

router = APIRouter(prefix="/v1/messages", tags=["messages"])
conversation_router = APIRouter(prefix="/v1/conversations", tags=["conversations"])
# A send like any other, so it lives here; its path stays under the registry's (docs/api.md).
template_router = APIRouter(prefix="/v1/templates", tags=["templates"])
graph_router = APIRouter(prefix="/graph", tags=["graph pass-through"])
HELD_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {
        "model": HeldOut,
        "description": "Held (`if_window_closed`): the window is not open; a re-engagement template went "
        "out (or one already awaits the reply) and the message waits for the customer's reply",
    }
}
TEXT = {
    "messaging_product": "whatsapp",
    "to": "+55 11 98765-4321",
    "type": "text",
    "text": {"body": "Your order has shipped"},
}
TEMPLATE = {
    "messaging_product": "whatsapp",
    "to": "+55 11 98765-4321",
    "type": "template",
    "template": {
        "name": "order_update",
        "language": {"code": "en"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#1234"}],
            }
        ],
    },
}
SEND_EXAMPLES = {
    "text": {
        "summary": "Free-form text: only while the window is open",
        "value": {"phone_number_id": EXAMPLE_PN, **TEXT},
    },
    "template": {"summary": "A template: at any time", "value": {"phone_number_id": EXAMPLE_PN, **TEMPLATE}},
    "hold": {
        "summary": "Text, held for the reply when the window is not open (202)",
        "value": {
            "phone_number_id": EXAMPLE_PN,
            **TEXT,
            "if_window_closed": {
                "template": {"name": "reopen_conversation", "language": {"code": "en"}},
                "hold_seconds": 86_400,
            },
        },
    },
}
IdempotencyKey = Annotated[
    str | None, Header(max_length=255, description="Same key (per API key) → at most one upstream send")
]


@router.post(
    "",
    summary="Send a message through the gate",
    response_model=SendOut,
    status_code=201,
    responses=HELD_RESPONSE
    | problems(
        *AUTH_PROBLEMS,
        InvalidRecipient,
        WindowClosed,
        TemplateNotFound,
        TemplateNotApproved,
        TemplateParametersInvalid,
        OptedOut,
        Undeliverable,
        MarketingUnavailable,
        BudgetExceeded,
        IdempotencyConflict,
        MarketingLimited,
        RateLimited,
        UpstreamError,
        UpstreamConfiguration,
        UpstreamTimeout,
    ),
)
async def send_message(
    request: Request,
    caller: Sender,
    body: Annotated[SendIn, Body(openapi_examples=SEND_EXAMPLES)],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """The Cloud API message body plus `phone_number_id`. Free-form types pass only while the window is
    open (outside the safety margin); otherwise 409 `window_closed` with the window and a hint. Templates
    pass at any time. The send is recorded before it leaves; a timeout is answered 504 and never re-sent.

    With `if_window_closed` (the gate's option, never sent to Meta) a free-form message for a window that
    is not open is held instead (202): the re-engagement template goes out first, gated as any template
    (its refusal is the answer, and nothing is held), or the message joins the wait already started for
    that customer (no second template, `pricing_estimate` null). The customer's next message releases
    the held messages in order; past `hold_seconds` a held message is `expired`, never sent."""
    hold = body.if_window_closed
    payload = {k: v for k, v in body.model_dump(exclude={"if_window_closed"}).items() if v is not None}
    sent = await held.send(gate(request), caller, payload, idempotency_key, hold)
    return json_response(sent.out, 202 if isinstance(sent, service.Held) else 201)


@template_router.post(
    "/{name}/send",
    summary="Send a template by name",
    response_model=SendOut,
    status_code=201,
    responses=problems(
        *AUTH_PROBLEMS,
        InvalidRecipient,
        TemplateNotFound,
        TemplateNotApproved,
        TemplateParametersInvalid,
        OptedOut,
        MarketingLimited,
        Undeliverable,
        MarketingUnavailable,
        IdempotencyConflict,
        RateLimited,
        UpstreamError,
        UpstreamConfiguration,
        UpstreamTimeout,
    ),
)
async def send_template(
    request: Request,
    caller: Sender,
    name: Annotated[str, Path(max_length=512, description="Template name", examples=["order_update"])],
    body: TemplateSendIn,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A template send without Cloud API components: values by position (a list, in reading order: the
    header's placeholders, then the body's) or by name (an object, NAMED templates), a media header, and
    button values by index. The registry's components place them; the built message then goes through
    `POST /v1/messages` unchanged (checked, recorded before it leaves, idempotent) and the answer is the
    same. Refusals: 422 `template_not_found`, `template_not_approved`, `template_parameters_invalid`;
    409 `marketing_unavailable` (a marketing template to a country Meta does not deliver marketing to)."""
    caller.require_number(body.phone_number_id)
    state = gate(request)
    async with state.engine.connect() as conn:
        message = await templates.build_send(conn, name, body)
    sent = await service.send(state, caller, message, idempotency_key)
    return json_response(sent.out, 202 if isinstance(sent, service.Held) else 201)


@router.get(
    "/{message_id}",
    summary="A sent message with its status history",
    response_model=MessageOut,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def get_message(request: Request, caller: Reader, message_id: UUID) -> MessageOut:
    """Status history (pending, accepted or held_for_quality_assessment, sent, delivered, read, failed
    with Meta's error, unknown) and Meta's pricing from status webhooks. Any key that may use the
    message's phone number sees it, whichever key sent it; for any other key it does not exist (404)."""
    async with gate(request).engine.connect() as conn:
        found = await repository.get(conn, message_id)
    # 404, not 403: a key of another number learns nothing, not even that the id exists.
    if found is None or not caller.may_use(found[0].phone_number_id):
        raise NotFound(f"no message {message_id}")
    row, events = found
    return MessageOut(
        id=row.id,
        phone_number_id=row.phone_number_id,
        recipient=RecipientOut(input=row.recipient_input, wa_id=row.recipient_wa_id),
        type=row.type,
        status=row.status,
        graph_message_id=row.graph_message_id,
        error=row.error,
        pricing=row.pricing,
        created_at=row.created_at,
        history=[EventOut(status=e.status, at=e.at, detail=e.detail) for e in events],
    )


Customer = Annotated[
    str,
    Path(max_length=200, description="Phone number (any spelling) or BSUID", examples=["+55 11 98765-4321"]),
]
PhoneNumberId = Annotated[str, Path(pattern=META_ID, max_length=64, examples=[EXAMPLE_PN])]


@conversation_router.get(
    "/{phone_number_id}/{customer}",
    summary="A customer's window, wait for a reply, and held messages",
    response_model=ConversationOut,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS, InvalidRecipient),
)
async def get_conversation(
    request: Request, caller: Reader, phone_number_id: PhoneNumberId, customer: Customer
) -> ConversationOut:
    """The window (as `GET /v1/windows`), the latest wait for the customer's reply (`continuation`, null
    if none was ever started; its `state` says whether it is over) and the ids of the messages still held
    in it, oldest first."""
    caller.require_number(phone_number_id)
    state = gate(request)
    ref = parse_customer(customer)
    [window] = await window_service.check(
        state.hot, phone_number_id, [ref], state.part(Policy), window_service.now()
    )
    async with state.engine.connect() as conn:
        wait = await repository.latest_wait(conn, phone_number_id, ref.aliases())
    if wait is None:
        return ConversationOut(window=window, continuation=None, held=[])
    continuation = ContinuationOut(
        id=wait.id,
        state=wait.state,
        template_message_id=wait.template_message_id,
        held=len(wait.held),
        reason=wait.reason,
    )
    return ConversationOut(window=window, continuation=continuation, held=wait.held)


@conversation_router.delete(
    "/{phone_number_id}/{customer}/held",
    summary="Cancel the messages held for a customer",
    response_model=CancelledOut,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS, InvalidRecipient),
)
async def cancel_held(
    request: Request, caller: Sender, phone_number_id: PhoneNumberId, customer: Customer
) -> CancelledOut:
    """Every message still held for this customer becomes `cancelled` (never sent) and the wait ends: a
    later held message starts a new wait (a new template). Messages already released are not touched;
    nothing held answers an empty list."""
    caller.require_number(phone_number_id)
    ref = parse_customer(customer)
    async with gate(request).engine.begin() as conn:
        cancelled = await held.cancel(conn, phone_number_id, ref.aliases())
    return CancelledOut(cancelled=cancelled)


# How the gate's own refusals look to a client that only knows Meta: (HTTP status, Meta code, message).
META_SHAPES: dict[str, tuple[int, int, str]] = {
    "window_closed": (400, 131047, "Re-engagement message"),
    "unauthorized": (401, 190, "Invalid OAuth access token"),
    "forbidden": (403, 10, "Application does not have permission for this action"),
    "rate_limited": (400, 130429, "Rate limit hit"),
    "upstream_timeout": (504, 131000, "Something went wrong"),
    "database_unavailable": (503, 131000, "Something went wrong"),
    "template_not_found": (404, 132001, "Template name does not exist in the translation"),
    "template_not_approved": (400, 132015, "Template is paused"),
    "template_parameters_invalid": (400, 132000, "Number of parameters does not match the expected number"),
    "opted_out": (400, 131050, "User has stopped marketing messages"),
    # What Meta's failed status says of a marketing template to a US number since 2025-04-01.
    "marketing_unavailable": (
        400,
        131049,
        "This message was not delivered to maintain healthy ecosystem engagement.",
    ),
    "budget_exceeded": (400, 131042, "Business eligibility payment issue"),
    "marketing_limited": (
        400,
        131049,
        "This message was not delivered to maintain healthy ecosystem engagement",
    ),
    "undeliverable": (400, 131026, "Message undeliverable"),
    "upstream_configuration": (400, 131005, "Access denied"),
    "upstream_error": (502, 131000, "Something went wrong"),  # Meta out of reach: nothing was sent
    "payload_too_large": (413, 100, "Invalid parameter"),
}
INVALID_PARAMETER = (400, 100, "Invalid parameter")
EXAMPLE_TRACE = "WG5f0c9e2a7b1d3c8e4f6a"  # the gate's own fbtrace_id: WG and 20 hex digits


def as_meta_error(err: GateError) -> Response:
    """The gate's refusal as Meta would answer it; what Meta has no code for is 100, Invalid parameter.
    Meta's own refusal is passed on unchanged, with Meta's HTTP status: SDKs map some statuses (401, 404,
    5xx) to their own exceptions."""
    logs.note(code=err.code)  # the request's log line and /metrics say which refusal it was
    status, body = meta_answer(err, "WG" + secrets.token_hex(10))
    return JSONResponse(body, status_code=status, headers=err.headers)


def meta_answer(err: GateError, fbtrace_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of `as_meta_error`; `fbtrace_id` names the gate's own refusal."""
    problem = err.problem()
    meta_error = problem.get("meta_error")
    if isinstance(meta_error, dict) and "error" in meta_error:  # Meta's own words and status, unchanged
        status = problem.get("meta_status")
        if not isinstance(status, int) or not 400 <= status <= 599:  # stored before the status was kept
            # A refusal only the business can fix stays a 4xx, as at Meta: a 5xx invites a retry.
            status = 400 if err.status < 500 or isinstance(err, UpstreamConfiguration) else 502
        return status, meta_error
    status, code, message = META_SHAPES.get(err.code, INVALID_PARAMETER)
    error = {
        "message": f"(#{code}) {message}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": problem["detail"]},
        "fbtrace_id": fbtrace_id,
        "window_gate": {"code": err.code, **{k: v for k, v in problem.items() if k == "window"}},
    }
    return status, {"error": error}


def meta_examples(*codes: str) -> dict[int, dict[str, Any]]:
    """By HTTP status, an example of each of the gate's refusals `codes` in Meta's shape, as the Graph
    routes answer them (`meta_answer` on the code's sample, without Meta's own error)."""
    kinds = errors.by_code()
    out: dict[int, dict[str, Any]] = {}
    for code in codes:
        kind = kinds[code]
        detail, context = kind.sample
        own = kind(detail, **{k: v for k, v in context.items() if k not in {"meta_error", "meta_status"}})
        status, body = meta_answer(own, EXAMPLE_TRACE)
        out.setdefault(status, {})[code] = {"summary": f"the gate's `{code}`", "value": body}
    return out


def meta_passed_on() -> dict[str, Any]:
    """An example of Meta's own error passed on unchanged, with Meta's status (190: an expired token)."""
    kind = UpstreamConfiguration
    status, body = meta_answer(kind(kind.sample[0], **kind.sample[1]), EXAMPLE_TRACE)
    return {"meta": {"summary": f"Meta's own error, with Meta's HTTP status ({status})", "value": body}}


def _graph_responses() -> dict[int | str, dict[str, Any]]:
    """Every status the pass-through answers, each in Meta's error shape, with the codes it carries."""
    shapes: dict[int, list[str]] = {}
    for status, code, message in (INVALID_PARAMETER, *META_SHAPES.values()):
        shapes.setdefault(status, []).append(f"{code} {message}")
    examples = meta_examples(ValidationFailed.code, *META_SHAPES)
    responses: dict[int | str, dict[str, Any]] = {
        status: {
            "model": GraphErrorOut,
            "description": "Meta's error shape: " + " · ".join(codes),
            "content": {"application/json": {"examples": examples[status]}},
        }
        for status, codes in sorted(shapes.items())
    }
    # `default` also keeps FastAPI from documenting its 422: malformed requests get Meta's 400 code 100.
    responses["default"] = {
        "model": GraphErrorOut,
        "description": "Meta's own error, passed on with Meta's own HTTP status (401 for 190, 404 for "
        "132001, 500 for 131000 …); any other error in Meta's shape",
        "content": {"application/json": {"examples": meta_passed_on()}},
    }
    answers = {
        "text": {
            "summary": "Sent: Meta's answer",
            "value": {
                "messaging_product": "whatsapp",
                "contacts": [EXAMPLE_RECIPIENT],
                "messages": [{"id": EXAMPLE_WAMID}],
            },
        },
        "template": {
            "summary": "A template sent: Meta's answer",
            "value": {
                "messaging_product": "whatsapp",
                "contacts": [EXAMPLE_RECIPIENT],
                "messages": [{"id": EXAMPLE_WAMID, "message_status": "accepted"}],
            },
        },
        "read": {"summary": "Marked as read", "value": {"success": True}},
    }
    success = {"schema": {"type": "object"}, "examples": answers}
    return {
        200: {"description": "Meta's own success body", "content": {"application/json": success}},
        **responses,
    }


@graph_router.post(
    "/{version}/{phone_number_id}/messages",
    summary="Graph-compatible send or mark as read (drop-in for Meta's endpoint)",
    status_code=200,
    response_class=JSONResponse,
    responses=_graph_responses(),
    # The endpoint reads its body itself (Meta's shape, any message type): documented here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object"},
                    "examples": {
                        "text": {"summary": "Free-form text: only while the window is open", "value": TEXT},
                        "template": {"summary": "A template: at any time", "value": TEMPLATE},
                        "read": {
                            "summary": "Mark a customer's message as read (not a send)",
                            "value": {
                                "messaging_product": "whatsapp",
                                "status": "read",
                                "message_id": "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBMDJBRjYyMkQ3QkQ4OEEzNDU3AA==",
                            },
                        },
                    },
                }
            },
        }
    },
)
@SEND.declared
async def graph_send(
    request: Request,
    version: Annotated[str, Path(pattern=r"^v\d+\.\d+$", examples=["v25.0"])],
    phone_number_id: Annotated[str, Path(pattern=META_ID, examples=[EXAMPLE_PN])],
    authorization: Authorization = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Exactly Meta's `POST /{version}/{phone_number_id}/messages`: an existing WhatsApp client changes
    only its base URL (`…/graph`) and token (a gate API key). Answers and errors have Meta's shapes, and
    Meta's own errors keep Meta's HTTP status. A status update (`"status": "read"`: mark as read, with or
    without `typing_indicator`) is not a send: no window, template or price check, nothing recorded,
    no Idempotency-Key; Meta's answer (`{"success": true}`) is the answer."""
    state = gate(request)
    try:
        caller = await SEND.caller(state, authorization, phone_number_id)
        body = _json_object(await request.body())
        if service.is_status_update(body):
            return JSONResponse(await service.update_status(state, caller, phone_number_id, body))
        sent = await service.send(
            state, caller, {**body, "phone_number_id": phone_number_id}, idempotency_key
        )
    except GateError as err:
        return as_meta_error(err)
    if isinstance(sent, service.Held):  # only a replay: the key of a held /v1/messages request
        return JSONResponse({"messaging_product": "whatsapp", "messages": [{"message_status": "held"}]})
    return JSONResponse(sent.meta)


def _json_object(raw: bytes) -> dict[str, Any]:
    # Read as JSON whatever its Content-Type (Meta's clients vary), so strictly: inputs.InputCheck passes
    # bodies labelled form or CSV on to their route.
    body = inputs.loads(raw)
    if not isinstance(body, dict):
        raise ValidationFailed("body must be a JSON object")
    return body
