"""HTTP: the business phone numbers admins set up (token, account, throughput, default re-engagement
template, time zone). A key limited to phone numbers reaches only its own: the others are 403 by their id
and absent from its listing."""

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from window_gate.apikey.access import Registrar
from window_gate.crypto import Sealer
from window_gate.errors import (
    AUTH_PROBLEMS,
    EncryptionNotConfigured,
    Forbidden,
    NotFound,
    ValidationFailed,
    problems,
)
from window_gate.inputs import META_ID
from window_gate.kit import gate
from window_gate.phonenumber import repository, service
from window_gate.phonenumber.schemas import PhoneNumberIn, PhoneNumberList, PhoneNumberOut, shown
from window_gate.window.schemas import EXAMPLE_PN

router = APIRouter(prefix="/v1/phone-numbers", tags=["phone numbers"])
PhoneNumberId = Annotated[
    str, Path(pattern=META_ID, max_length=64, description="Meta's phone number id", examples=[EXAMPLE_PN])
]


@router.put(
    "/{phone_number_id}",
    summary="Register a phone number, or change how it is set up",
    response_model=PhoneNumberOut,
    responses=problems(*AUTH_PROBLEMS, ValidationFailed, EncryptionNotConfigured),
)
async def put_phone_number(
    request: Request, caller: Registrar, phone_number_id: PhoneNumberId, body: PhoneNumberIn
) -> PhoneNumberOut:
    """Fields left out stay as they are; null clears one. The access token is encrypted with
    WINDOW_GATE_ENCRYPTION_KEY before it is stored (409 `encryption_not_configured` without one) and is
    never returned: answers say `has_access_token`. Sends from the number use it within a minute on every
    replica (at once for a new token). Only a key limited to no number may change `waba_id`."""
    g = gate(request)
    async with g.engine.begin() as conn:
        row = await service.put(conn, g.part(Sealer), caller, phone_number_id, body)
    return shown(row)


@router.get(
    "",
    summary="Every phone number the gate knows",
    response_model=PhoneNumberList,
    responses=problems(*AUTH_PROBLEMS),
)
async def list_phone_numbers(request: Request, caller: Registrar) -> PhoneNumberList:
    """Registered ones and those only heard of in Meta's webhooks (`registered: false`). A key limited to
    phone numbers sees its own only."""
    async with gate(request).engine.connect() as conn:
        rows = [r for r in await repository.listing(conn) if caller.reaches({r.phone_number_id})]
    return PhoneNumberList(phone_numbers=[shown(r) for r in rows])


@router.get(
    "/{phone_number_id}",
    summary="One phone number",
    response_model=PhoneNumberOut,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def get_phone_number(
    request: Request, caller: Registrar, phone_number_id: PhoneNumberId
) -> PhoneNumberOut:
    """How it is set up and what Meta last said of its quality; never its token."""
    async with gate(request).engine.connect() as conn:
        row = await repository.get(conn, phone_number_id)
    if row is None:
        raise NotFound(f"no phone number {phone_number_id}")
    return shown(row)


@router.delete(
    "/{phone_number_id}",
    summary="Forget a phone number and its token",
    response_class=Response,
    status_code=204,
    responses=problems(*AUTH_PROBLEMS, NotFound, Forbidden),
)
async def delete_phone_number(
    request: Request, caller: Registrar, phone_number_id: PhoneNumberId
) -> Response:
    """Its token and settings are gone (sends fall back to WINDOW_GATE_GRAPH_ACCESS_TOKEN); what Meta's
    next webhooks say of it is learnt again. Windows, messages and costs are kept."""
    async with gate(request).engine.begin() as conn:
        if not await repository.remove(conn, phone_number_id):
            raise NotFound(f"no phone number {phone_number_id}")
    return Response(status_code=204)
