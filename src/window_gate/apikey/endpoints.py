"""HTTP: API keys (admins). A key limited to phone numbers reaches the keys limited to some of its own
numbers (apikey/rules.py), and only those: it may create those, lists only those, revokes only those;
any other is 404 to it, word for word what a missing id gets."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response

from window_gate.apikey import repository, service
from window_gate.apikey.access import Admin
from window_gate.apikey.schemas import EXAMPLE_KEY_ID, ApiKeyCreated, ApiKeyIn, ApiKeyList, ApiKeyOut
from window_gate.errors import AUTH_PROBLEMS, Forbidden, NotFound, ValidationFailed, problems
from window_gate.kit import gate

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])
ApiKeyId = Annotated[UUID, Path(description="The key's id (not the key)", examples=[EXAMPLE_KEY_ID])]


@router.post(
    "",
    summary="Create an API key",
    response_model=ApiKeyCreated,
    status_code=201,
    responses=problems(*AUTH_PROBLEMS, ValidationFailed),
)
async def create_api_key(request: Request, caller: Admin, body: ApiKeyIn) -> ApiKeyCreated:
    """The key is in this answer only; the gate keeps its SHA-256. A key limited to phone numbers must
    name some of its own in `phone_number_ids`."""
    numbers = body.numbers()
    if not caller.reaches(numbers):
        raise Forbidden("a key limited to phone numbers creates keys limited to some of its own numbers only")
    async with gate(request).engine.begin() as conn:
        key, row = await service.issue(conn, body.name, body.role, numbers)
    return ApiKeyCreated(**ApiKeyOut.model_validate(row, from_attributes=True).model_dump(), key=key)


@router.get("", summary="Every API key", response_model=ApiKeyList, responses=problems(*AUTH_PROBLEMS))
async def list_api_keys(request: Request, caller: Admin) -> ApiKeyList:
    """Name, role, numbers, when created and last used; never the key. A key limited to phone numbers sees
    the keys limited to some of its numbers only."""
    async with gate(request).engine.connect() as conn:
        rows = [r for r in await repository.listing(conn) if caller.reaches(r.phone_number_ids)]
    return ApiKeyList(api_keys=[ApiKeyOut.model_validate(r, from_attributes=True) for r in rows])


@router.delete(
    "/{api_key_id}",
    summary="Revoke an API key",
    response_class=Response,
    status_code=204,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def revoke_api_key(request: Request, caller: Admin, api_key_id: ApiKeyId) -> Response:
    """Refused everywhere within API_KEY_CACHE_SECONDS (each replica remembers a key that long); its
    messages, budgets and costs are kept."""
    async with gate(request).engine.begin() as conn:
        row = await repository.get(conn, api_key_id)
        if row is None or not caller.reaches(row.phone_number_ids):
            raise NotFound(f"no API key {api_key_id}")
        await repository.revoke(conn, api_key_id)
    return Response(status_code=204)
