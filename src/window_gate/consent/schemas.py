"""What the opt-out endpoints answer."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

EXAMPLE_PN = "106540352242922"
EXAMPLE_CURSOR = "WyIxMDY1NDAzNTIyNDI5MjIiLDQyXQ"
EXAMPLE_OPT_OUT: JsonDict = {
    "phone_number_id": EXAMPLE_PN,
    "customer": {"wa_id": "5511987654321", "user_id": None},
    "opted_out": True,
    "source": "keyword",
    "changed_at": "2026-11-25T10:00:00Z",
}
SOURCES = (
    "`user_preferences` (the customer's WhatsApp settings), `meta_131050` (Meta refused a marketing send), "
    "`keyword` (the customer wrote or tapped an opt-out / opt-in keyword), `api` (this API)"
)


class ConsentCustomer(BaseModel):
    wa_id: str | None = Field(description="WhatsApp id (phone digits) when known", examples=["5511987654321"])
    user_id: str | None = Field(
        description="Business-scoped user id (BSUID) when known", examples=["US.13491208655302741918"]
    )


class OptOutOut(BaseModel):
    """A customer's current word on marketing messages from one business number."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": EXAMPLE_OPT_OUT | {"source": "api", "changed_at": "2026-12-02T09:30:00Z"}
        }
    )

    phone_number_id: str = Field(description="The business phone number id", examples=[EXAMPLE_PN])
    customer: ConsentCustomer = Field(description="The customer the statement is about")
    opted_out: bool = Field(
        description="True: marketing templates to this customer are refused (409 `opted_out`)",
        examples=[True],
    )
    source: str = Field(description=f"Where the newest statement came from: {SOURCES}", examples=["keyword"])
    changed_at: datetime = Field(
        description="When the customer (or the API caller) said it; the newest statement wins",
        examples=["2026-11-25T10:00:00Z"],
    )


class OptOutPage(BaseModel):
    """One page of the customers currently opted out of marketing messages."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"opt_outs": [EXAMPLE_OPT_OUT], "next_after": EXAMPLE_CURSOR}}
    )

    opt_outs: list[OptOutOut] = Field(
        description="In (phone_number_id, customer) order", examples=[[EXAMPLE_OPT_OUT]]
    )
    next_after: str | None = Field(
        description="Pass as `after` for the next page; null on the last page",
        examples=[EXAMPLE_CURSOR],
    )
