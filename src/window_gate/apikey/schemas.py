"""What the API-key endpoints take and answer. A key is shown once, when it is created."""

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from window_gate.apikey.rules import Role

EXAMPLE_KEY_ID = "8a4f3c2e-1b5d-4e6f-9a7b-0c1d2e3f4a5b"
EXAMPLE_KEY = "wg_lcAcYsJ72BedDFYunGn3Hm1gB0i3nxEI-Gw8FG3qR7o"
EXAMPLE_API_KEY: JsonDict = {
    "id": EXAMPLE_KEY_ID,
    "name": "crm-prod",
    "key_prefix": EXAMPLE_KEY[:9],
    "role": "send",
    "phone_number_ids": ["106540352242922"],
    "created_at": "2026-12-01T23:00:00Z",
    "last_used_at": "2026-12-02T08:00:00Z",
}


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"name": "crm-prod", "role": "send", "phone_number_ids": ["106540352242922"]}
        },
    )

    name: str = Field(min_length=1, max_length=200, description="Who uses it", examples=["crm-prod"])
    role: Role = Field(description="`read` ⊂ `send` ⊂ `admin`", examples=["send"])
    phone_number_ids: list[str] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Only these business numbers; omitted: every number. A key limited to numbers creates "
        "keys limited to some of its own only",
        examples=[["106540352242922"]],
    )

    def numbers(self) -> list[str]:
        return sorted(set(self.phone_number_ids or ()))


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_API_KEY})

    id: UUID = Field(examples=[EXAMPLE_KEY_ID])
    name: str = Field(examples=["crm-prod"])
    key_prefix: str = Field(description="The key's first characters, to recognise it", examples=["wg_3qXb9a"])
    role: Role = Field(examples=["send"])
    phone_number_ids: list[str] = Field(description="Empty: every number", examples=[["106540352242922"]])
    created_at: datetime = Field(examples=["2026-12-01T23:00:00Z"])
    last_used_at: datetime | None = Field(
        description="Its last use, to the minute or so (stamped at most once a minute); null: never used",
        examples=["2026-12-02T08:00:00Z"],
    )


class ApiKeyCreated(ApiKeyOut):
    model_config = ConfigDict(
        json_schema_extra={"example": EXAMPLE_API_KEY | {"last_used_at": None, "key": EXAMPLE_KEY}}
    )

    key: str = Field(
        description="Send it as `Authorization: Bearer <key>`. Shown only in this answer: only its hash is "
        "stored",
        examples=["wg_3qXb9a…"],
    )


class ApiKeyList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"api_keys": [EXAMPLE_API_KEY]}})

    api_keys: list[ApiKeyOut] = Field(description="Keys not revoked, oldest first")
