"""HTTP: "can I send free text to this customer now, and until when?"."""

from fastapi import APIRouter, Request, Response

from window_gate.apikey.access import READ, SECURITY, Reader
from window_gate.customer.identity import parse_customer
from window_gate.errors import (
    AUTH_PROBLEMS,
    InvalidRecipient,
    ValidationFailed,
    problems,
)
from window_gate.kit import Gate, gate, json_response
from window_gate.window import service
from window_gate.window.rule import Policy
from window_gate.window.schemas import EXAMPLE_PN, WindowCheckIn, WindowCheckOut, WindowOut

router = APIRouter(prefix="/v1/windows", tags=["windows"])
ERRORS = problems(*AUTH_PROBLEMS, InvalidRecipient)
MAX_ID = 64
MAX_CUSTOMER = 200
# The hot path reads its parameters itself: FastAPI's per-request parameter solving was a fifth of its CPU
# (bench/). So they are documented here rather than declared in the signature.
GET_PARAMETERS = [
    {
        "name": "phone_number_id",
        "in": "path",
        "required": True,
        "description": "The business phone number id",
        "schema": {"type": "string", "maxLength": MAX_ID},
        "example": EXAMPLE_PN,
    },
    {
        "name": "customer",
        "in": "path",
        "required": True,
        "description": "Phone number (any spelling: +, spaces, dashes) or BSUID",
        "schema": {"type": "string", "maxLength": MAX_CUSTOMER},
        "examples": {"phone": {"value": "+55 11 98765-4321"}, "bsuid": {"value": "US.13491208655302741918"}},
    },
]


@router.get(
    "/{phone_number_id}/{customer}",
    summary="Window of one customer",
    response_model=WindowOut,
    status_code=200,
    responses=ERRORS,
    openapi_extra={"parameters": GET_PARAMETERS, "security": SECURITY},
)
@READ.declared
async def get_window(request: Request) -> Response:
    """Whether free-form messages may go to this customer now (`can_send_free_form`), and until when
    (`safe_until`). A customer never seen is not an error: state `never_opened`. The customer may be
    written with `+`, spaces and dashes, or as a BSUID; national spellings (BR ninth digit, MX 521,
    AR 549) find the same window."""
    params = request.path_params
    window = await one_window(
        gate(request), request.headers.get("authorization"), params["phone_number_id"], params["customer"]
    )
    return json_response(window)


async def one_window(
    state: Gate, authorization: str | None, phone_number_id: str, customer: str
) -> WindowOut:
    await READ.caller(state, authorization, phone_number_id)
    if len(phone_number_id) > MAX_ID:
        raise ValidationFailed(f"phone_number_id: at most {MAX_ID} characters")
    if len(customer) > MAX_CUSTOMER:
        raise ValidationFailed(f"customer: at most {MAX_CUSTOMER} characters")
    ref = parse_customer(customer)
    [answer] = await service.check(state.reads, phone_number_id, [ref], state.part(Policy), service.now())
    return answer


@router.post(
    "/check",
    summary="Windows of up to 1,000 customers",
    response_model=WindowCheckOut,
    status_code=200,
    responses=ERRORS,
)
async def check_windows(request: Request, caller: Reader, body: WindowCheckIn) -> Response:
    """The same answer as the single lookup for each customer, in the order asked, in one round trip
    to the database. One unreadable customer refuses the whole batch (422 `invalid_recipient` with
    its `index`)."""
    caller.require_number(body.phone_number_id)
    state = gate(request)
    refs = service.parse_all(body.customers)
    windows = await service.check(state.reads, body.phone_number_id, refs, state.part(Policy), service.now())
    return json_response(WindowCheckOut(windows=windows))
