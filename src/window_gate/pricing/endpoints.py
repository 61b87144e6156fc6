"""HTTP: what sending cost (estimated and as Meta reported it), and monthly budgets."""

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from window_gate.apikey.access import Admin, Reader
from window_gate.errors import AUTH_PROBLEMS, NotFound, problems
from window_gate.kit import gate
from window_gate.pricing import service
from window_gate.pricing.rules import Tables
from window_gate.pricing.schemas import EXAMPLE_KEY, BudgetIn, BudgetOut, BudgetsOut, CostsOut, GroupBy, Scope
from window_gate.window import service as window_service
from window_gate.window.schemas import EXAMPLE_PN

costs_router = APIRouter(prefix="/v1/costs", tags=["costs"])
budgets_router = APIRouter(prefix="/v1/budgets", tags=["budgets"])
ScopePath = Annotated[Scope, Path(description="phone_number or api_key", examples=["phone_number"])]
ScopeId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        description="The phone_number_id, or the API key's id",
        examples=[EXAMPLE_PN, EXAMPLE_KEY],
    ),
]


@costs_router.get(
    "",
    summary="Estimated and Meta-reported cost of the sends",
    response_model=CostsOut,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS),
)
async def get_costs(
    request: Request,
    caller: Reader,
    group_by: Annotated[GroupBy, Query(description="day, category, market or api_key")],
    phone_number_id: Annotated[
        str | None,
        Query(max_length=64, description="One business number; omitted: every number the key may see"),
    ] = None,
    from_date: Annotated[
        date | None,
        Query(alias="from", description="First day (UTC), inclusive; default: the 1st of this month"),
    ] = None,
    to_date: Annotated[
        date | None, Query(alias="to", description="Last day (UTC), inclusive; default: today")
    ] = None,
) -> CostsOut:
    """Sends that left (Meta accepted them, or their outcome is unknown) between `from` and `to`, grouped
    by day, category, market or API key: how many, the gate's estimate when each left (`estimated_amount`,
    `sent_free`), and what Meta's status webhooks said (`reported_*`: Meta's `pricing.type`, or its
    deprecated `billable`, by the category Meta reported, priced with the rate card of the day sent).
    Amounts are decimal strings in the rate card's currency; `rate_card` names the files they come from.
    A key limited to phone numbers sees only the sends of its numbers, and by API key only the keys
    within its reach (each of their numbers is one of its own) by id and name: the rest of those sends,
    by whichever key, are one group `other_keys` without a name."""
    numbers = [phone_number_id] if phone_number_id is not None else sorted(caller.phone_number_ids) or None
    state = gate(request)
    start, end = service.report_period(from_date, to_date, window_service.now())
    async with state.engine.connect() as conn:
        return await service.costs(
            conn,
            state.part(Tables),
            caller,
            phone_number_id=phone_number_id,
            phone_number_ids=numbers,
            from_date=start,
            to_date=end,
            group_by=group_by,
        )


@budgets_router.put(
    "/{scope}/{scope_id}",
    summary="Set the monthly budget of a phone number or an API key",
    response_model=BudgetOut,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def put_budget(
    request: Request, caller: Admin, scope: ScopePath, scope_id: ScopeId, body: BudgetIn
) -> BudgetOut:
    """Admin only. From now on a paid send whose estimate would take this month's (UTC) estimated spend
    past `monthly_limit` is refused before it leaves: 402 `budget_exceeded` with the scope, limit, spend
    and amount. Free sends are never refused. Spend counts from the 1st of the month whether or not a
    budget was set then; the currency must be the rate card's. A key limited to phone numbers may budget
    only its own numbers and the keys within its reach (each of their numbers is one of its own);
    anything else is 403 `forbidden`, whether or not it exists."""
    state = gate(request)
    async with state.engine.begin() as conn:
        return await service.set_budget(
            conn,
            state.part(Tables),
            caller,
            scope,
            scope_id,
            body.monthly_limit,
            body.currency,
            window_service.now(),
        )


@budgets_router.get(
    "",
    summary="Every budget with this month's spend",
    response_model=BudgetsOut,
    status_code=200,
    responses=problems(*AUTH_PROBLEMS),
)
async def list_budgets(request: Request, caller: Admin) -> BudgetsOut:
    """Admin only. Each budget with the estimated spend reserved so far this calendar month (UTC); for a
    key limited to phone numbers, only the budgets it could set."""
    async with gate(request).engine.connect() as conn:
        return await service.list_budgets(conn, caller, window_service.now())


@budgets_router.delete(
    "/{scope}/{scope_id}",
    summary="Remove a budget",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def delete_budget(request: Request, caller: Admin, scope: ScopePath, scope_id: ScopeId) -> Response:
    """Admin only, within the key's reach as for setting it. Sends from this scope are no longer limited;
    its spend keeps being counted."""
    async with gate(request).engine.begin() as conn:
        await service.delete_budget(conn, caller, scope, scope_id)
    return Response(status_code=204)
