"""HTTP: subscriptions (admins), their deliveries and retries.

A key limited to phone numbers reaches a subscription filtered to some of its numbers, and only such: it
may create those, lists only those, and any other is 404 to it, word for word what a missing id gets."""

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.apikey.access import Admin
from window_gate.apikey.rules import Caller
from window_gate.crypto import Sealer
from window_gate.db import AnyRow
from window_gate.errors import AUTH_PROBLEMS, Forbidden, NotFound, ValidationFailed, problems
from window_gate.kit import gate
from window_gate.subscription import repository, service
from window_gate.subscription.schemas import (
    EXAMPLE_ID,
    DeliveryOut,
    DeliveryPage,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
    delivery,
)

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])
SubscriptionId = Annotated[UUID, Path(description="The subscription's id", examples=[EXAMPLE_ID])]


async def _reached(conn: AsyncConnection, caller: Caller, subscription_id: UUID) -> AnyRow:
    row = await repository.get(conn, subscription_id)
    if row is None or not caller.reaches(row.phone_number_ids or ()):
        raise NotFound(f"no subscription {subscription_id}")
    return row


@router.post(
    "",
    summary="Subscribe a service to Meta's webhooks and the gate's events",
    response_model=SubscriptionCreated,
    status_code=201,
    responses=problems(*AUTH_PROBLEMS, ValidationFailed),
)
async def create(request: Request, caller: Admin, body: SubscriptionIn) -> SubscriptionCreated:
    """From now on every event of these types (for these numbers) is POSTed to `url`, at least once,
    retried with backoff for RELAY_RETRY_HOURS. The secret is shown only here. A key limited to phone
    numbers must name some of its own in `phone_number_ids`."""
    if not caller.reaches(body.phone_number_ids or ()):
        raise Forbidden("a key limited to phone numbers subscribes to events of its own numbers only")
    g = gate(request)
    async with g.engine.begin() as conn:
        row = await service.create(
            conn,
            g.settings,
            g.part(Sealer),
            url=body.url,
            events=body.events,
            phone_number_ids=body.phone_number_ids,
            description=body.description,
        )
    return SubscriptionCreated.model_validate(row)


@router.get(
    "",
    summary="Every subscription",
    response_model=SubscriptionList,
    responses=problems(*AUTH_PROBLEMS),
)
async def list_subscriptions(request: Request, caller: Admin) -> SubscriptionList:
    """Oldest first; secrets are never shown again. A key limited to phone numbers sees the subscriptions
    filtered to some of its numbers only."""
    async with gate(request).engine.connect() as conn:
        rows = [r for r in await repository.listing(conn) if caller.reaches(r.phone_number_ids or ())]
    return SubscriptionList(
        subscriptions=[SubscriptionOut.model_validate(r, from_attributes=True) for r in rows]
    )


@router.get(
    "/{subscription_id}",
    summary="One subscription",
    response_model=SubscriptionOut,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def get_subscription(
    request: Request, caller: Admin, subscription_id: SubscriptionId
) -> SubscriptionOut:
    """What it receives and where; not its secret."""
    async with gate(request).engine.connect() as conn:
        row = await _reached(conn, caller, subscription_id)
    return SubscriptionOut.model_validate(row, from_attributes=True)


@router.delete(
    "/{subscription_id}",
    summary="Unsubscribe",
    response_class=Response,
    status_code=204,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def delete_subscription(request: Request, caller: Admin, subscription_id: SubscriptionId) -> Response:
    """Nothing more is sent to it; its deliveries not yet sent are dropped."""
    async with gate(request).engine.begin() as conn:
        await _reached(conn, caller, subscription_id)
        await repository.remove(conn, subscription_id)
    return Response(status_code=204)


@router.get(
    "/{subscription_id}/deliveries",
    summary="A subscription's deliveries, with every attempt",
    response_model=DeliveryPage,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def list_deliveries(
    request: Request,
    caller: Admin,
    subscription_id: SubscriptionId,
    state: Annotated[
        Literal["pending", "failed", "delivered", "dead"] | None, Query(description="Only this state")
    ] = None,
    before: Annotated[int | None, Query(ge=1, description="`next_before` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
) -> DeliveryPage:
    """Newest first, each with every attempt (when, the subscriber's status, the error, how long).
    Keyset pagination: pass `next_before` as `before` until it is null."""
    async with gate(request).engine.connect() as conn:
        await _reached(conn, caller, subscription_id)
        rows = await repository.deliveries(conn, subscription_id, state, before, limit)
    page = [delivery(r) for r in rows]
    return DeliveryPage(deliveries=page, next_before=page[-1].id if len(page) == limit else None)


@router.post(
    "/{subscription_id}/deliveries/{delivery_id}/retry",
    summary="Send a delivery again now (a dead one too)",
    response_model=DeliveryOut,
    responses=problems(*AUTH_PROBLEMS, NotFound),
)
async def retry(
    request: Request,
    caller: Admin,
    subscription_id: SubscriptionId,
    delivery_id: Annotated[int, Path(ge=1, description="The delivery's id", examples=[42])],
) -> DeliveryOut:
    """Due at once with a fresh RELAY_RETRY_HOURS; same event id (consumers that saw it drop it)."""
    async with gate(request).engine.begin() as conn:
        await _reached(conn, caller, subscription_id)
        if await repository.retry(conn, subscription_id, delivery_id) is None:
            raise NotFound(f"no delivery {delivery_id} for subscription {subscription_id}")
        (row,) = await repository.deliveries(conn, subscription_id, None, delivery_id + 1, 1)
    return delivery(row)
