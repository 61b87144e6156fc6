"""HTTP: the template registry (sync, listing). Sends by name: message/endpoints.py."""

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request

from window_gate.apikey.access import Admin, Reader
from window_gate.errors import AUTH_PROBLEMS, UpstreamError, problems
from window_gate.kit import gate
from window_gate.template import service
from window_gate.template.schemas import (
    EXAMPLE_CURSOR,
    EXAMPLE_PN,
    EXAMPLE_WABA,
    SyncIn,
    SyncOut,
    TemplatePage,
)

router = APIRouter(prefix="/v1/templates", tags=["templates"])


@router.get(
    "",
    summary="List the template registry",
    response_model=TemplatePage,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS),
)
async def list_templates(
    request: Request,
    caller: Reader,
    waba_id: Annotated[
        str | None,
        Query(max_length=64, description="Only this WhatsApp Business Account", examples=[EXAMPLE_WABA]),
    ] = None,
    phone_number_id: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only the account this business number belongs to",
            examples=[EXAMPLE_PN],
        ),
    ] = None,
    name: Annotated[
        str | None, Query(max_length=512, description="Exact name", examples=["order_update"])
    ] = None,
    language: Annotated[
        str | None, Query(max_length=32, description="Language code", examples=["en"])
    ] = None,
    status: Annotated[
        str | None,
        Query(max_length=32, description="APPROVED, PAUSED, ... (any case)", examples=["APPROVED"]),
    ] = None,
    category: Annotated[
        str | None,
        Query(
            max_length=32, description="MARKETING, UTILITY or AUTHENTICATION (any case)", examples=["UTILITY"]
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size", examples=[100])] = 100,
    after: Annotated[
        str | None,
        Query(max_length=1000, description="`next_after` of the previous page", examples=[EXAMPLE_CURSOR]),
    ] = None,
) -> TemplatePage:
    """Every template the registry holds, any status, as Meta last described it (sync, status / quality /
    category webhooks, Meta's answers to sends). Keyset pagination: pass `next_after` as `after` until it
    is null. A key limited to phone numbers sees only the accounts of those numbers."""
    async with gate(request).engine.connect() as conn:
        accounts = await service.readable_accounts(conn, caller, waba_id, phone_number_id)
        return await service.listing(
            conn,
            waba_ids=accounts,
            name=name,
            language=language,
            status=status,
            category=category,
            after=after,
            limit=limit,
        )


@router.post(
    "/sync",
    summary="Sync templates from Meta",
    response_model=SyncOut,
    status_code=200,
    responses=problems(
        *AUTH_PROBLEMS,
        UpstreamError(
            "1 of 2 accounts could not be synced: Meta answered (190) Error validating access token",
            accounts=[
                {"waba_id": EXAMPLE_WABA, "templates": 5, "deleted": 0, "error": None},
                {
                    "waba_id": "102290129340399",
                    "templates": 0,
                    "deleted": 0,
                    "error": "Meta answered (190) Error validating access token",
                },
            ],
        ),
    ),
)
async def sync_templates(
    request: Request,
    caller: Admin,
    body: Annotated[
        SyncIn | None,
        Body(
            openapi_examples={
                "every account": {"summary": "WABA_IDS and the accounts webhooks named", "value": {}},
                "one account": {"summary": "Only this account", "value": {"waba_ids": [EXAMPLE_WABA]}},
            }
        ),
    ] = None,
) -> SyncOut:
    """Pulls every template of each WhatsApp Business Account from Meta's `message_templates` (all pages)
    and replaces the registry's view of it: upserted by Meta's id, templates no longer listed marked
    DELETED. Accounts: `waba_ids` if given, else WINDOW_GATE_WABA_IDS plus every account learnt from
    webhooks (the simulator's in sandbox mode). Each account is committed on its own; when any fails the
    answer is 502 `upstream_error` with every account's outcome in `accounts`. Admin keys only; a key
    limited to phone numbers syncs only the accounts of its numbers (as webhooks told them): by default
    those, and naming any other account is 403 `forbidden`."""
    state = gate(request)
    async with state.engine.connect() as conn:
        accounts = await service.accounts_to_sync(
            conn, state.settings, caller, body.waba_ids if body else None
        )
    results = SyncOut(accounts=[r.public() for r in await service.sync(state.engine, state.graph, accounts)])
    failed = [a for a in results.accounts if a.error]
    if failed:
        raise UpstreamError(
            f"{len(failed)} of {len(results.accounts)} accounts could not be synced: {failed[0].error}",
            accounts=[a.model_dump() for a in results.accounts],
        )
    return results
