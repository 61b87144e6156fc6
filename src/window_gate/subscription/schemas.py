"""What the subscription endpoints take and answer."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from window_gate.subscription.rules import EVENT_TYPES, GATE_EVENTS, META_WEBHOOK

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
EXAMPLE_ID = "3f1c2a5e-8d4b-4c7a-9e2f-1b6d0a9c8e71"
EXAMPLE_SUBSCRIPTION: JsonDict = {
    "id": EXAMPLE_ID,
    "url": "http://127.0.0.1:9000/whatsapp",
    "events": [META_WEBHOOK],
    "phone_number_ids": ["106540352242922"],
    "description": "the support inbox",
    "created_at": "2026-12-01T23:00:00Z",
}
EXAMPLE_ATTEMPT: JsonDict = {
    "at": "2026-12-01T23:00:01Z",
    "status_code": 503,
    "error": "HTTP 503: busy",
    "duration_ms": 12,
}
EXAMPLE_DELIVERY: JsonDict = {
    "id": 42,
    "event_id": "0b8f7c1e-2a44-4f0e-9d55-3c8e1f6a7b90",
    "event_type": META_WEBHOOK,
    "state": "failed",
    "created_at": "2026-12-01T23:00:00Z",
    "next_attempt_at": "2026-12-01T23:00:06Z",
    "attempts": [EXAMPLE_ATTEMPT],
}
EVENTS_DOC = f"`{META_WEBHOOK}` (Meta's deliveries, byte for byte) and the gate's own: " + ", ".join(
    f"`{name}` ({meaning})" for name, meaning in GATE_EVENTS.items()
)


class SubscriptionIn(BaseModel):
    """A service that wants events: where, which, and for which numbers."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "url": "http://127.0.0.1:9000/whatsapp",
                "events": [META_WEBHOOK],
                "phone_number_ids": ["106540352242922"],
                "description": "the support inbox",
            }
        }
    )

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
    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_SUBSCRIPTION})

    id: UUID = Field(examples=[EXAMPLE_ID])
    url: str = Field(examples=["http://127.0.0.1:9000/whatsapp"])
    events: list[str] = Field(examples=[[META_WEBHOOK]])
    phone_number_ids: list[str] | None = Field(examples=[None])
    description: str | None = Field(examples=["the support inbox"])
    created_at: datetime = Field(examples=["2026-12-01T23:00:00Z"])


class SubscriptionCreated(SubscriptionOut):
    model_config = ConfigDict(
        json_schema_extra={
            "example": EXAMPLE_SUBSCRIPTION | {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwJ7sQxN0bM1c="}
        }
    )

    secret: str = Field(
        description="Shown only in this answer. `meta.webhook`: set it as the consumer's app secret "
        "(X-Hub-Signature-256 is keyed by this string as shown); the gate's events: the Standard Webhooks "
        "secret (`whsec_` + base64 of the key)",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class SubscriptionList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"subscriptions": [EXAMPLE_SUBSCRIPTION]}})

    subscriptions: list[SubscriptionOut] = Field(description="Oldest first")


class AttemptOut(BaseModel):
    at: datetime = Field(examples=["2026-12-01T23:00:01Z"])
    status_code: int | None = Field(
        description="The subscriber's HTTP status; null: no answer", examples=[503]
    )
    error: str | None = Field(description="Why it failed; null: delivered", examples=["HTTP 503: busy"])
    duration_ms: int = Field(examples=[12])


class DeliveryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": EXAMPLE_DELIVERY | {"state": "pending", "next_attempt_at": "2026-12-02T09:30:00Z"}
        }
    )

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
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "deliveries": [
                    EXAMPLE_DELIVERY,
                    EXAMPLE_DELIVERY
                    | {
                        "id": 41,
                        "event_id": "6d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a",
                        "state": "delivered",
                        "created_at": "2026-12-01T22:58:00Z",
                        "next_attempt_at": None,
                        "attempts": [
                            EXAMPLE_ATTEMPT
                            | {
                                "at": "2026-12-01T22:58:00Z",
                                "status_code": 200,
                                "error": None,
                                "duration_ms": 9,
                            }
                        ],
                    },
                ],
                "next_before": 41,
            }
        }
    )

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
