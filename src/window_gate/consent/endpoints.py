"""HTTP: marketing opt-outs recorded by the caller, and the list of customers who stopped them."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from window_gate.apikey.access import Reader, Sender
from window_gate.consent import service
from window_gate.consent.schemas import EXAMPLE_CURSOR, EXAMPLE_PN, OptOutOut, OptOutPage
from window_gate.customer.identity import parse_customer
from window_gate.errors import AUTH_PROBLEMS, InvalidRecipient, problems
from window_gate.kit import gate

router = APIRouter(prefix="/v1/opt-outs", tags=["opt-outs"])
ERRORS = problems(*AUTH_PROBLEMS, InvalidRecipient)
PhoneNumberId = Annotated[
    str, Path(max_length=64, description="The business phone number id", examples=[EXAMPLE_PN])
]
Customer = Annotated[
    str,
    Path(
        max_length=200,
        description="Phone number (`+`, spaces and dashes allowed) or BSUID",
        examples=["+55 11 98765-4321", "US.13491208655302741918"],
    ),
]


@router.put(
    "/{phone_number_id}/{customer}",
    summary="Record a marketing opt-out",
    response_model=OptOutOut,
    status_code=200,
    responses=ERRORS,
)
async def opt_out(
    request: Request, caller: Sender, phone_number_id: PhoneNumberId, customer: Customer
) -> OptOutOut:
    """The customer asked you, outside WhatsApp's own settings, to stop marketing messages from this
    number: from now on a MARKETING template to them is refused with 409 `opted_out` (utility and
    authentication templates still pass). Recorded with source `api` as of now; a customer never seen
    is created. Idempotent. A later statement from any source (the customer's WhatsApp settings, an
    opt-in keyword, DELETE here) replaces it: the newest statement wins."""
    ref = parse_customer(customer)
    async with gate(request).engine.begin() as conn:
        return await service.declare(conn, phone_number_id, ref, True, service.now())


@router.delete(
    "/{phone_number_id}/{customer}",
    summary="Lift a marketing opt-out",
    response_class=Response,
    status_code=204,
    responses=ERRORS,
)
async def opt_in(
    request: Request, caller: Sender, phone_number_id: PhoneNumberId, customer: Customer
) -> Response:
    """The customer asked to receive marketing messages again: records opted_out=false with source
    `api` as of now, replacing any older statement (a keyword, WhatsApp settings, Meta's 131050).
    Idempotent; 204 also for a customer who had not opted out."""
    ref = parse_customer(customer)
    async with gate(request).engine.begin() as conn:
        await service.declare(conn, phone_number_id, ref, False, service.now())
    return Response(status_code=204)


@router.get(
    "",
    summary="Customers who stopped marketing messages",
    response_model=OptOutPage,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS),
)
async def list_opt_outs(
    request: Request,
    caller: Reader,
    phone_number_id: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only this business number (default: every number the key may use)",
            examples=[EXAMPLE_PN],
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size", examples=[100])] = 100,
    after: Annotated[
        str | None,
        Query(max_length=200, description="`next_after` of the previous page", examples=[EXAMPLE_CURSOR]),
    ] = None,
) -> OptOutPage:
    """Only customers currently opted out, whatever the source (`user_preferences`, `meta_131050`,
    `keyword`, `api`), with the statement that decided it. Keyset pagination: pass `next_after` as
    `after` until it is null. A key limited to phone numbers sees only those."""
    numbers = [phone_number_id] if phone_number_id is not None else sorted(caller.phone_number_ids) or None
    async with gate(request).engine.connect() as conn:
        return await service.opted_out(conn, numbers, after, limit)
