"""What the window endpoints take and answer."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from window_gate.window.rule import WindowState

EXAMPLE_PN = "106540352242922"
EXAMPLE_WINDOW: JsonDict = {
    "phone_number_id": EXAMPLE_PN,
    "customer": {"input": "+55 11 98765-4321", "wa_id": "5511987654321", "user_id": None},
    "state": "open",
    "can_send_free_form": True,
    "last_inbound_at": "2026-12-01T21:30:00Z",
    "expires_at": "2026-12-02T21:30:00Z",
    "safe_until": "2026-12-02T21:29:00Z",
    "seconds_remaining": 43140,
    "free_entry_point": None,
    "phone_number": {
        "quality_event": "UPGRADE",
        "messaging_limit_tier": "TIER_10K",
        "quality_updated_at": "2026-11-20T08:00:00Z",
        "restrictions": [],
        "account_ban_state": None,
    },
}


class CustomerOut(BaseModel):
    input: str = Field(description="The customer as the caller wrote it", examples=["+55 11 98765-4321"])
    wa_id: str | None = Field(description="WhatsApp id (phone digits) when known", examples=["5511987654321"])
    user_id: str | None = Field(description="Business-scoped user id (BSUID) when known", examples=[None])


class FreeEntryPointOut(BaseModel):
    active: bool = Field(description="Messages are free now (price only: permission still needs the CSW)")
    expires_at: datetime | None = Field(description="When the free-entry-point window ends, once started")
    referral_at: datetime = Field(description="When the customer wrote from a Click-to-WhatsApp ad")
    reply_by: datetime = Field(description="A business reply before this starts the free-entry-point window")
    started_at: datetime | None = Field(description="The business reply that started it")


class RestrictionOut(BaseModel):
    type: str = Field(
        description="Meta's restriction_type on the business account",
        examples=["RESTRICTED_BIZ_INITIATED_MESSAGING"],
    )
    expires_at: datetime | None = Field(description="When Meta lifts it (null: Meta gave no end)")


class PhoneNumberOut(BaseModel):
    """What Meta's webhooks last said of the business number and its account. Context only: the gate
    refuses nothing for it (Meta refuses what a restriction forbids)."""

    quality_event: str | None = Field(
        description="Latest phone_number_quality_update event: FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE, "
        "ONBOARDING, THROUGHPUT_UPGRADE, …",
        examples=["FLAGGED"],
    )
    messaging_limit_tier: str | None = Field(
        description="Messaging limit Meta last named (business-initiated conversations per 24 h)",
        examples=["TIER_2K"],
    )
    quality_updated_at: datetime | None = Field(description="When Meta sent that quality update")
    restrictions: list[RestrictionOut] = Field(
        description="The account's restrictions in force now (account_update ACCOUNT_RESTRICTION)"
    )
    account_ban_state: str | None = Field(
        description="The account's latest ban state (account_update DISABLED_UPDATE): DISABLE, "
        "SCHEDULE_FOR_DISABLE, REINSTATE",
        examples=[None],
    )


class WindowOut(BaseModel):
    """The customer service window of one (business number, customer) pair, evaluated now."""

    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_WINDOW})

    phone_number_id: str = Field(description="The business phone number id", examples=[EXAMPLE_PN])
    customer: CustomerOut = Field(description="The customer as asked, and the ids it resolved to")
    state: WindowState = Field(
        description="open | closing (inside the safety margin) | expired | never_opened | closed_by_meta"
    )
    can_send_free_form: bool = Field(description="True only in state `open`", examples=[True])
    last_inbound_at: datetime | None = Field(description="Timestamp of the customer's latest message")
    expires_at: datetime | None = Field(description="last_inbound_at + 24 h: when Meta closes the window")
    safe_until: datetime | None = Field(description="expires_at − WINDOW_GATE_SAFETY_MARGIN_SECONDS")
    seconds_remaining: int = Field(description="Seconds free-form may still be sent (until safe_until)", ge=0)
    free_entry_point: FreeEntryPointOut | None = Field(
        description="Set when the window was opened from a Click-to-WhatsApp ad"
    )
    phone_number: PhoneNumberOut | None = Field(
        default=None,
        description="The business number's quality, messaging limit and account restrictions as Meta's "
        "webhooks last told them; null while Meta has said none of these",
    )


class WindowCheckIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "phone_number_id": EXAMPLE_PN,
                "customers": ["+55 11 98765-4321", "US.13491208655302741918"],
            }
        }
    )

    phone_number_id: str = Field(min_length=1, max_length=64, examples=[EXAMPLE_PN])
    customers: list[str] = Field(
        min_length=1,
        max_length=1000,
        description="Phone numbers (any spelling) or BSUIDs, up to 1,000",
        examples=[["+55 11 98765-4321", "US.13491208655302741918"]],
    )


class WindowCheckOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "windows": [
                    EXAMPLE_WINDOW,
                    {
                        "phone_number_id": EXAMPLE_PN,
                        "customer": {
                            "input": "US.13491208655302741918",
                            "wa_id": None,
                            "user_id": "US.13491208655302741918",
                        },
                        "state": "never_opened",
                        "can_send_free_form": False,
                        "last_inbound_at": None,
                        "expires_at": None,
                        "safe_until": None,
                        "seconds_remaining": 0,
                        "free_entry_point": None,
                        "phone_number": EXAMPLE_WINDOW["phone_number"],
                    },
                ]
            }
        }
    )

    windows: list[WindowOut] = Field(description="One window per customer, in the order asked")
