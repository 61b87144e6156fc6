"""What the template endpoints take and answer."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from window_gate.inputs import META_ID

EXAMPLE_PN = "106540352242922"
EXAMPLE_WABA = "102290129340398"
EXAMPLE_CURSOR = "WyIxMDIyOTAxMjkzNDAzOTgiLCJvcmRlcl91cGRhdGUiLCJlbiIsIjEwMDAwMDAwMDAwMDAwMDIiXQ"
EXAMPLE_COMPONENTS: list[JsonValue] = [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped."}]
STATUSES = (
    "APPROVED (the only one that can be sent), PENDING, REJECTED, PAUSED, DISABLED, IN_APPEAL, FLAGGED, "
    "LIMIT_EXCEEDED, LOCKED, ARCHIVED, DELETED, PENDING_DELETION, REINSTATED"
)


class MetaErrorOut(BaseModel):
    code: int = Field(
        description="Meta's error code: 132001 (missing in that language or not approved; sends are "
        "refused `template_not_found` until a sync or status webhook says otherwise), 132000 / 132012 "
        "(parameters: the registry's components may be out of date), 132015 / 132016 (paused / disabled)",
        examples=[132001],
    )
    at: datetime = Field(description="When Meta answered it", examples=["2026-11-25T10:00:00Z"])


class TemplateOut(BaseModel):
    """A message template as the registry knows it."""

    id: str = Field(description="Meta's template id", examples=["1000000000000002"])
    waba_id: str = Field(description="The WhatsApp Business Account it belongs to", examples=[EXAMPLE_WABA])
    name: str = Field(
        description="Template name; (name, language) is what a send names", examples=["order_update"]
    )
    language: str = Field(description="Language and locale code", examples=["en", "pt_BR"])
    status: str = Field(description=f"Meta's status: {STATUSES}", examples=["APPROVED"])
    category: str | None = Field(
        description="MARKETING | UTILITY | AUTHENTICATION (null when not known yet)", examples=["UTILITY"]
    )
    previous_category: str | None = Field(
        description="The category before Meta last changed it (template_category_update)", examples=[None]
    )
    quality: str | None = Field(
        description="Meta's quality rating: GREEN | YELLOW | RED | UNKNOWN", examples=["GREEN"]
    )
    reason: str | None = Field(
        description="Meta's reason for the current status (rejections, pauses), when one was given",
        examples=[None, "INCORRECT_CATEGORY"],
    )
    parameter_format: str = Field(
        description="POSITIONAL (`{{1}}`, `{{2}}` in order) or NAMED (`{{first_name}}` with parameter_name)",
        examples=["POSITIONAL"],
    )
    components: list[dict[str, Any]] | None = Field(
        description="Meta's components (HEADER, BODY, FOOTER, BUTTONS); null for a template known only from "
        "a status webhook so far: its parameters are checked once a sync brings them",
        examples=[EXAMPLE_COMPONENTS],
    )
    components_stale_since: datetime | None = Field(
        None,
        description="When Meta said the components changed (message_template_components_update): its "
        "parameters are not checked until the next sync brings the new ones; null when current",
        examples=[None],
    )
    last_meta_error: MetaErrorOut | None = Field(
        description="Meta's latest template error answered to a send through the gate, until the next sync "
        "or status webhook"
    )
    synced_at: datetime | None = Field(
        description="When a sync last saw it listed by Meta (null: known from webhooks only)",
        examples=["2026-11-25T10:00:00Z"],
    )
    updated_at: datetime = Field(
        description="When the registry last changed it", examples=["2026-11-25T10:00:00Z"]
    )


class TemplatePage(BaseModel):
    """One page of the registry."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "templates": [
                    {
                        "id": "1000000000000002",
                        "waba_id": EXAMPLE_WABA,
                        "name": "order_update",
                        "language": "en",
                        "status": "APPROVED",
                        "category": "UTILITY",
                        "previous_category": None,
                        "quality": "GREEN",
                        "reason": None,
                        "parameter_format": "POSITIONAL",
                        "components": EXAMPLE_COMPONENTS,
                        "components_stale_since": None,
                        "last_meta_error": None,
                        "synced_at": "2026-12-02T06:00:00Z",
                        "updated_at": "2026-11-25T10:00:00Z",
                    }
                ],
                "next_after": EXAMPLE_CURSOR,
            }
        }
    )

    templates: list[TemplateOut] = Field(description="In (waba_id, name, language) order")
    next_after: str | None = Field(
        description="Pass as `after` for the next page; null on the last page", examples=[EXAMPLE_CURSOR]
    )


class SyncIn(BaseModel):
    waba_ids: list[Annotated[str, Field(pattern=META_ID)]] | None = Field(
        None,
        max_length=100,
        description="Only these accounts (default: WINDOW_GATE_WABA_IDS plus every account learnt from "
        "webhooks)",
        examples=[[EXAMPLE_WABA]],
    )


class AccountSyncOut(BaseModel):
    waba_id: str = Field(description="The WhatsApp Business Account", examples=[EXAMPLE_WABA])
    templates: int = Field(description="Templates Meta listed (every status)", examples=[5])
    deleted: int = Field(description="Templates no longer listed, now marked DELETED", examples=[0])
    error: str | None = Field(
        description="Why this account could not be synced (nothing of it was changed)", examples=[None]
    )


class SyncOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"accounts": [{"waba_id": EXAMPLE_WABA, "templates": 5, "deleted": 0, "error": None}]}
        }
    )

    accounts: list[AccountSyncOut] = Field(description="One result per account, in the order synced")


class TemplateSendIn(BaseModel):
    """A template send by name, with parameter values instead of Cloud API components."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "phone_number_id": EXAMPLE_PN,
                "to": "+55 11 98765-4321",
                "language": "en",
                "parameters": ["Ana", "#1234"],
            }
        }
    )

    phone_number_id: str = Field(
        pattern=META_ID, description="Business number to send from (digits)", examples=[EXAMPLE_PN]
    )
    to: str = Field(
        min_length=1,
        max_length=200,
        description="Customer phone number (any spelling) or BSUID",
        examples=["+55 11 98765-4321"],
    )
    language: str = Field(min_length=1, max_length=32, description="Template language code", examples=["en"])
    parameters: list[str] | dict[str, str] = Field(
        default_factory=list,
        max_length=100,
        description="POSITIONAL templates: a list of values in reading order (the header's placeholders, "
        "then the body's). NAMED templates: an object of values by placeholder name",
        examples=[["Ana", "#1234"], {"first_name": "Ana", "order_id": "#1234"}],
    )
    header: dict[str, Any] | None = Field(
        None,
        description="An IMAGE / VIDEO / DOCUMENT header's media (`{link}` or `{id}`), a LOCATION header's "
        "`{latitude, longitude, name, address}`; or a complete header parameter with its `type`",
        examples=[{"link": "https://example.com/receipt.pdf"}],
    )
    buttons: dict[int, str] | None = Field(
        None,
        description="Button values by index: a dynamic URL's suffix (or an authentication code), a "
        "COPY_CODE button's code, a QUICK_REPLY button's payload",
        examples=[{"0": "order/1234"}],
    )
