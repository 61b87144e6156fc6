"""HTTP: "can I send free text to this customer now, and until when?"."""

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from window_gate.apikey.rules import Role
from window_gate.customer.identity import parse_customer
from window_gate.errors import AUTH_PROBLEMS, InvalidRecipient, problems
from window_gate.kit import CallerDep, gate, json_response
from window_gate.window import service
from window_gate.window.schemas import EXAMPLE_PN, WindowCheckIn, WindowCheckOut, WindowOut

router = APIRouter(prefix="/v1/windows", tags=["windows"])
ERRORS = problems(*AUTH_PROBLEMS, InvalidRecipient)


@router.get(
    "/{phone_number_id}/{customer}",
    summary="Window of one customer",
    response_model=WindowOut,
    status_code=200,
    responses=ERRORS,
)
async def get_window(
    request: Request,
    caller: CallerDep,
    phone_number_id: Annotated[str, Path(max_length=64, examples=[EXAMPLE_PN])],
    customer: Annotated[str, Path(max_length=200, examples=["+55 11 98765-4321", "US.13491208655302741918"])],
) -> Response:
    """Whether free-form messages may go to this customer now (`can_send_free_form`), and until when
    (`safe_until`). A customer never seen is not an error: state `never_opened`. The customer may be
    written with `+`, spaces and dashes, or as a BSUID; national spellings (BR ninth digit, MX 521,
    AR 549) find the same window."""
    caller.require(Role.READ, phone_number_id)
    state = gate(request)
    ref = parse_customer(customer)
    [answer] = await service.check(state.reads, phone_number_id, [ref], state.policy, service.now())
    return json_response(answer)


@router.post(
    "/check",
    summary="Windows of up to 1,000 customers",
    response_model=WindowCheckOut,
    status_code=200,
    responses=ERRORS,
)
async def check_windows(request: Request, caller: CallerDep, body: WindowCheckIn) -> Response:
    """The same answer as the single lookup for each customer, in the order asked, in one round trip
    to the database. One unreadable customer refuses the whole batch (422 `invalid_recipient` with
    its `index`)."""
    caller.require(Role.READ, body.phone_number_id)
    state = gate(request)
    refs = service.parse_all(body.customers)
    windows = await service.check(state.reads, body.phone_number_id, refs, state.policy, service.now())
    return json_response(WindowCheckOut(windows=windows))
