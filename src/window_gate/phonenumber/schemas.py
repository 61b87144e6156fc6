"""What the phone-number endpoints take and answer. The access token goes in, never out."""

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic.config import JsonDict

from window_gate.inputs import META_ID
from window_gate.window.schemas import EXAMPLE_PN

EXAMPLE_WABA = "102290129340398"
EXAMPLE_TEMPLATE: JsonDict = {"name": "reconnect", "language": {"code": "en_US"}}
EXAMPLE_NUMBER: JsonDict = {
    "phone_number_id": EXAMPLE_PN,
    "registered": True,
    "waba_id": EXAMPLE_WABA,
    "has_access_token": True,
    "display_phone_number": "15550001111",
    "throughput_per_second": 80,
    "default_reengagement_template": EXAMPLE_TEMPLATE,
    "time_zone": "America/Sao_Paulo",
    "quality_event": "UPGRADE",
    "messaging_limit_tier": "TIER_10K",
    "quality_updated_at": "2026-11-20T08:00:00Z",
    "created_at": "2026-12-01T23:00:00Z",
    "updated_at": "2026-12-02T08:00:00Z",
}


class Language(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(min_length=2, max_length=20, examples=["en_US"])


class TemplateObject(BaseModel):
    """A Cloud API template object, as a send's `template` (components with parameters allowed)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$", examples=["reconnect"])
    language: Language = Field(description="`{code}`, as in a send", examples=[{"code": "en_US"}])
    components: list[dict[str, Any]] | None = Field(
        None,
        max_length=20,
        description="Parameters, as in a send's template",
        examples=[[{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]],
    )


class PhoneNumberIn(BaseModel):
    """What an admin sets on a number. A field left out stays as it is; null clears it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "waba_id": EXAMPLE_WABA,
                "access_token": "EAAGm0PX4ZCpsBAKZCo7ZBQ4xV3…",
                "display_phone_number": "15550001111",
                "throughput_per_second": 80,
                "default_reengagement_template": EXAMPLE_TEMPLATE,
                "time_zone": "America/Sao_Paulo",
            }
        },
    )

    waba_id: str | None = Field(
        None,
        pattern=META_ID,
        description="Its WhatsApp Business Account (otherwise learnt from webhooks). Only a key limited to "
        "no number may set it: the account decides which templates a limited key reaches",
        examples=[EXAMPLE_WABA],
    )
    access_token: SecretStr | None = Field(
        None,
        min_length=16,
        max_length=4096,
        description="Meta's token for this number (a System User token). Encrypted at rest with "
        "WINDOW_GATE_ENCRYPTION_KEY and never returned; null: use WINDOW_GATE_GRAPH_ACCESS_TOKEN",
        examples=["EAAGm0PX4ZCpsBAKZCo7ZBQ4xV3…"],
    )
    display_phone_number: str | None = Field(
        None,
        pattern=r"^[0-9]{5,20}$",
        description="Digits, as Meta's webhooks name it",
        examples=["15550001111"],
    )
    throughput_per_second: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Messages per second Meta allows this number (80 by default)",
        examples=[80],
    )
    default_reengagement_template: TemplateObject | None = Field(
        None,
        description="The template sent when a message waits for a closed window (`if_window_closed` without "
        "its own template)",
        examples=[EXAMPLE_TEMPLATE],
    )
    time_zone: str | None = Field(
        None, max_length=64, description="IANA time zone name", examples=["America/Sao_Paulo"]
    )

    @field_validator("time_zone")
    @classmethod
    def _iana(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not an IANA time zone name: {value!r}") from None
        return value


class PhoneNumberOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_NUMBER})

    phone_number_id: str = Field(examples=[EXAMPLE_PN])
    registered: bool = Field(
        description="Set up by an admin (PUT); false: only heard of in Meta's webhooks or a template sync",
        examples=[True],
    )
    waba_id: str | None = Field(examples=[EXAMPLE_WABA])
    has_access_token: bool = Field(
        description="Whether it has a token of its own (never shown); false: WINDOW_GATE_GRAPH_ACCESS_TOKEN",
        examples=[True],
    )
    display_phone_number: str | None = Field(examples=["15550001111"])
    throughput_per_second: int | None = Field(examples=[80])
    default_reengagement_template: dict[str, Any] | None = Field(examples=[EXAMPLE_TEMPLATE])
    time_zone: str | None = Field(examples=["America/Sao_Paulo"])
    quality_event: str | None = Field(
        description="Meta's latest phone_number_quality_update event", examples=["FLAGGED"]
    )
    messaging_limit_tier: str | None = Field(examples=["TIER_2K"])
    quality_updated_at: datetime | None = Field(examples=["2026-12-01T23:00:00Z"])
    created_at: datetime = Field(examples=["2026-12-01T23:00:00Z"])
    updated_at: datetime | None = Field(
        description="An admin's last change", examples=["2026-12-02T08:00:00Z"]
    )


class PhoneNumberList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"phone_numbers": [EXAMPLE_NUMBER]}})

    phone_numbers: list[PhoneNumberOut] = Field(description="By id")


def shown(row: Any) -> PhoneNumberOut:
    return PhoneNumberOut(
        phone_number_id=row.phone_number_id,
        registered=row.registered_at is not None,
        waba_id=row.waba_id,
        has_access_token=row.access_token_encrypted is not None,
        display_phone_number=row.display_phone_number,
        throughput_per_second=row.throughput_per_second,
        default_reengagement_template=row.default_reengagement_template,
        time_zone=row.time_zone,
        quality_event=row.quality_event,
        messaging_limit_tier=row.messaging_limit_tier,
        quality_updated_at=row.quality_updated_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
