"""What the message endpoints take and answer."""

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from window_gate.inputs import META_ID
from window_gate.pricing.schemas import EXAMPLE_ESTIMATE, EstimateOut
from window_gate.window.schemas import EXAMPLE_PN, EXAMPLE_WINDOW, WindowOut

HOLD_SECONDS_DEFAULT = 604_800  # 7 days
HOLD_SECONDS_MAX = 2_592_000  # 30 days
EXAMPLE_ID = "01a23616-e638-73d1-8c6b-9e7f2a4d6c8e"  # a UUIDv7: made at its created_at below
EXAMPLE_WAMID = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjQ4QzVGQkQ3RjU5RjNBRDZGOAA="
EXAMPLE_CONTINUATION = "01a23616-ddf0-75b6-8c7d-8e9f0a1b2c3d"
EXAMPLE_RECIPIENT: JsonDict = {"input": "+55 11 98765-4321", "wa_id": "5511987654321"}


class HoldIn(BaseModel):
    """What to do when the window is not open: send a re-engagement template (once per wait) and hold
    this message until the customer replies."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "template": {"name": "reopen_conversation", "language": {"code": "en"}},
                "hold_seconds": 86_400,
            }
        },
    )

    template: dict[str, Any] | None = Field(
        None,
        description="A Cloud API template object (`name`, `language`, `components`); default: the number's "
        "default_reengagement_template. Neither: 409 window_closed as without this option",
        examples=[{"name": "reopen_conversation", "language": {"code": "en"}}],
    )
    hold_seconds: int = Field(
        HOLD_SECONDS_DEFAULT,
        ge=1,
        le=HOLD_SECONDS_MAX,
        description="How long the message may wait for the reply; then it is `expired`, never sent",
        examples=[86_400],
    )


class SendIn(BaseModel):
    """The Cloud API message body, plus the business number to send from."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "phone_number_id": EXAMPLE_PN,
                "messaging_product": "whatsapp",
                "to": "+55 11 98765-4321",
                "type": "text",
                "text": {"body": "Your order has shipped"},
            }
        },
    )

    phone_number_id: str = Field(pattern=META_ID, description="Business number to send from (digits)")
    messaging_product: str = Field("whatsapp", pattern="^whatsapp$", description="Always `whatsapp`")
    recipient_type: str = Field("individual", description="`individual` (groups are later scope)")
    to: str | None = Field(None, max_length=200, description="Customer phone number, any spelling")
    recipient: str | None = Field(None, max_length=200, description="Customer BSUID, instead of `to`")
    type: str = Field("text", min_length=1, max_length=32, description="text, image, template, …")
    if_window_closed: HoldIn | None = Field(
        None,
        description="The gate's option, never sent to Meta: when the window is not open, send a "
        "re-engagement template and hold this message until the customer replies (202)",
    )


class RecipientOut(BaseModel):
    input: str = Field(description="The recipient as the caller wrote it", examples=["+55 11 98765-4321"])
    wa_id: str | None = Field(
        description="Meta's wa_id for it, once Meta answered", examples=["551187654321"]
    )


class SendOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": EXAMPLE_ID,
                "graph_message_id": EXAMPLE_WAMID,
                "status": "accepted",
                "recipient": EXAMPLE_RECIPIENT,
                "window": EXAMPLE_WINDOW,
                "pricing_estimate": EXAMPLE_ESTIMATE,
            }
        }
    )

    id: UUID = Field(description="The gate's id of this send (also in biz_opaque_callback_data)")
    graph_message_id: str | None = Field(description="Meta's wamid", examples=["wamid.HBgN…"])
    status: str = Field(
        description="accepted, held_for_quality_assessment (Meta holds the template while it judges its "
        "quality: sent later, or failed), or a later status from Meta's webhooks",
        examples=["accepted"],
    )
    recipient: RecipientOut = Field(description="Who the message went to: as written, and Meta's wa_id")
    window: WindowOut = Field(description="The window as the gate saw it when the send was decided")
    pricing_estimate: EstimateOut | None = Field(None, description="What the gate expects Meta to charge")


class EventOut(BaseModel):
    status: str = Field(
        description="pending, accepted, held_for_quality_assessment, sent, delivered, read, failed, unknown"
    )
    at: datetime = Field(description="When it happened (Meta's timestamp for webhook statuses)")
    detail: dict[str, Any] | list[Any] | None = Field(description="Meta's error or status payload")


class MessageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": EXAMPLE_ID,
                "phone_number_id": EXAMPLE_PN,
                "recipient": EXAMPLE_RECIPIENT,
                "type": "text",
                "status": "read",
                "graph_message_id": EXAMPLE_WAMID,
                "error": None,
                "pricing": {
                    "billable": False,
                    "pricing_model": "PMP",
                    "category": "service",
                    "type": "free_customer_service",
                },
                "created_at": "2026-12-02T09:30:00.120000Z",
                "history": [
                    {"status": "pending", "at": "2026-12-02T09:30:00.120000Z", "detail": None},
                    {"status": "accepted", "at": "2026-12-02T09:30:00.410000Z", "detail": None},
                    {"status": "sent", "at": "2026-12-02T09:30:01Z", "detail": None},
                    {"status": "delivered", "at": "2026-12-02T09:30:02Z", "detail": None},
                    {"status": "read", "at": "2026-12-02T09:31:15Z", "detail": None},
                ],
            }
        }
    )

    id: UUID = Field(description="The gate's id of this send")
    phone_number_id: str = Field(examples=[EXAMPLE_PN])
    recipient: RecipientOut = Field(description="Who the message went to: as written, and Meta's wa_id")
    type: str = Field(examples=["text"])
    status: str = Field(description="Latest status", examples=["delivered"])
    graph_message_id: str | None = Field(description="Meta's wamid")
    error: dict[str, Any] | None = Field(description="Meta's error when the send failed")
    pricing: dict[str, Any] | None = Field(description="Meta's `pricing` from status webhooks")
    created_at: datetime = Field(description="When the gate recorded the send, before it left")
    history: list[EventOut] = Field(description="Every status, oldest first")


class GraphErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str = Field(description="`(#code) text`", examples=["(#131047) Re-engagement message"])
    type: str | None = Field(None, description="Meta's error type", examples=["OAuthException"])
    code: int = Field(description="Meta's error code: branch on this", examples=[131047])
    error_data: dict[str, Any] | None = Field(
        None, description="`{messaging_product, details}`", examples=[{"details": "…"}]
    )
    fbtrace_id: str | None = Field(None, description="Meta's trace id (the gate's own start with WG)")


class GraphErrorOut(BaseModel):
    """An error as Meta's Graph API writes it: Meta's own, or the gate's refusal in Meta's terms."""

    error: GraphErrorDetail = Field(description="Meta's error object")


class ContinuationOut(BaseModel):
    """A wait for the customer's reply: one re-engagement template, the messages held until the reply."""

    id: UUID = Field(description="The wait's id: every message held in it names it")
    state: str = Field(
        description="sending (the template on its way), awaiting_reply, replied (releasing), released, "
        "failed (Meta refused the template: see `reason`), expired (nothing left waiting), cancelled",
        examples=["awaiting_reply"],
    )
    template_message_id: UUID | None = Field(
        description="The gate's id of the template send (GET /v1/messages/{id})"
    )
    held: int = Field(description="Messages waiting in it now", examples=[2])
    hold_until: datetime | None = Field(
        None, description="This message's: when it expires unsent if no reply came (in a 202)"
    )
    reason: dict[str, Any] | None = Field(
        None, description="Why it failed: the template's refusal, or Meta's error from its status webhook"
    )


class HeldOut(BaseModel):
    """202: the window was not open; the message waits for the customer's reply."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": EXAMPLE_ID,
                "status": "held",
                "continuation": {
                    "id": EXAMPLE_CONTINUATION,
                    "state": "awaiting_reply",
                    "template_message_id": "01a23616-dfb2-7a3b-8c2d-1e0f9a8b7c6d",
                    "held": 1,
                    "hold_until": "2026-12-03T09:30:00Z",
                    "reason": None,
                },
                "pricing_estimate": EXAMPLE_ESTIMATE
                | {
                    "category": "marketing",
                    "amount": "0.0630",
                    "rate": "0.0630",
                    "unsure": False,
                    "rule": "marketing outside csw: paid (since 2025-07-01)",
                },
            }
        }
    )

    id: UUID = Field(description="The gate's id of the held message (GET /v1/messages/{id})")
    status: str = Field(description="`held`", examples=["held"])
    continuation: ContinuationOut = Field(description="The wait it joined or started")
    pricing_estimate: EstimateOut | None = Field(
        None,
        description="The re-engagement template's price; null when the message joined a wait (nothing new paid)",
    )


class ConversationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "window": EXAMPLE_WINDOW
                | {
                    "state": "expired",
                    "can_send_free_form": False,
                    "last_inbound_at": "2026-11-30T08:00:00Z",
                    "expires_at": "2026-12-01T08:00:00Z",
                    "safe_until": "2026-12-01T07:59:00Z",
                    "seconds_remaining": 0,
                },
                "continuation": {
                    "id": EXAMPLE_CONTINUATION,
                    "state": "awaiting_reply",
                    "template_message_id": "01a23616-dfb2-7a3b-8c2d-1e0f9a8b7c6d",
                    "held": 1,
                    "reason": None,
                },
                "held": [EXAMPLE_ID],
            }
        }
    )

    window: WindowOut = Field(description="The window now, as GET /v1/windows answers it")
    continuation: ContinuationOut | None = Field(
        description="The latest wait for the customer's reply (over or not); null if none was started"
    )
    held: list[UUID] = Field(description="Messages still held, oldest first (GET /v1/messages/{id})")


class CancelledOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"cancelled": [EXAMPLE_ID]}})

    cancelled: list[UUID] = Field(description="The held messages now `cancelled`, never to be sent")
