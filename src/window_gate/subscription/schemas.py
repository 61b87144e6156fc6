"""What the subscription endpoints take and answer."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from window_gate.subscription.rules import EVENT_TYPES, GATE_EVENTS, META_WEBHOOK

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
EXAMPLE_ID = "3f1c2a5e-8d4b-4c7a-9e2f-1b6d0a9c8e71"
EVENTS_DOC = f"`{META_WEBHOOK}` (Meta's deliveries, byte for byte) and the gate's own: " + ", ".join(
    f"`{name}` ({meaning})" for name, meaning in GATE_EVENTS.items()
)


class SubscriptionIn(BaseModel):
    """A service that wants events: where, which, and for which numbers."""

    url: str = Field(
        max_length=2000,
        pattern=r"^https?://[^\s/?#]+([/?#]\S*)?$",
        description="Where deliveries are POSTed: any http(s) URL, loopback and private networks included "
        "(only admins create subscriptions); WINDOW_GATE_RELAY_URL_ALLOWLIST narrows it",
        examples=["http://127.0.0.1:9000/whatsapp"],
    )
    events: list[EventType] = Field(
        min_length=1, max_length=len(EVENT_TYPES), description=EVENTS_DOC, examples=[[META_WEBHOOK]]
    )
    phone_number_ids: list[str] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Only events about these business numbers (a Meta delivery: when any change in it names "
        "one); omitted: every number",
        examples=[["106540352242922"]],
    )
    description: str | None = Field(None, max_length=500, examples=["the support inbox"])


class SubscriptionOut(BaseModel):
    id: UUID = Field(examples=[EXAMPLE_ID])
    url: str = Field(examples=["http://127.0.0.1:9000/whatsapp"])
    events: list[str] = Field(examples=[[META_WEBHOOK]])
    phone_number_ids: list[str] | None = Field(examples=[None])
    description: str | None = Field(examples=["the support inbox"])
    created_at: datetime = Field(examples=["2026-12-01T23:00:00Z"])


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(
        description="Shown only in this answer. `meta.webhook`: set it as the consumer's app secret "
        "(X-Hub-Signature-256 is keyed by this string as shown); the gate's events: the Standard Webhooks "
        "secret (`whsec_` + base64 of the key)",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut] = Field(description="Oldest first")


class AttemptOut(BaseModel):
    at: datetime = Field(examples=["2026-12-01T23:00:01Z"])
    status_code: int | None = Field(
        description="The subscriber's HTTP status; null: no answer", examples=[503]
    )
    error: str | None = Field(description="Why it failed; null: delivered", examples=["HTTP 503: busy"])
    duration_ms: int = Field(examples=[12])


class DeliveryOut(BaseModel):
    id: int = Field(examples=[42])
    event_id: UUID = Field(
        description="The same on every attempt and for every subscriber (`webhook-id`): dedupe by it",
        examples=["0b8f7c1e-2a44-4f0e-9d55-3c8e1f6a7b90"],
    )
    event_type: str = Field(examples=[META_WEBHOOK])
    state: Literal["pending", "failed", "delivered", "dead"] = Field(
        description="`pending`: not yet attempted; `failed`: will be attempted again at `next_attempt_at`; "
        "`delivered`: a 2xx answer; `dead`: refused for RELAY_RETRY_HOURS, retried only by hand",
        examples=["failed"],
    )
    created_at: datetime = Field(examples=["2026-12-01T23:00:00Z"])
    next_attempt_at: datetime | None = Field(
        description="When it is attempted next (pending or failed)", examples=["2026-12-01T23:00:02Z"]
    )
    attempts: list[AttemptOut] = Field(description="Oldest first")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryOut] = Field(description="Newest first")
    next_before: int | None = Field(description="Pass as `before` for the next page; null on the last page")


def delivery(row: Any) -> DeliveryOut:
    due = row.state in ("pending", "failed")
    return DeliveryOut(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        state=row.state,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at if due else None,
        attempts=[AttemptOut.model_validate(a) for a in row.attempts],
    )
