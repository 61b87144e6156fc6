"""What the costs and budgets endpoints take and answer. Money is a decimal string, never a float."""

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from window_gate.window.schemas import EXAMPLE_PN

EXAMPLE_KEY = "0b8f7a52-4c1e-4a8e-9a57-2f0e4c8b1d2a"
# A free-form reply inside the window, as the bundled example rate card prices it.
EXAMPLE_ESTIMATE: JsonDict = {
    "category": "service",
    "market": "Brazil",
    "billable": False,
    "amount": "0",
    "currency": "USD",
    "rate": "0.0070",
    "type": "free_customer_service",
    "inside_csw": True,
    "inside_fep": False,
    "unsure": True,
    "rule": "service inside csw: paid after 1000 a month (since 2026-10-01, unsure)",
}
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=6)]


class Scope(StrEnum):
    PHONE_NUMBER = "phone_number"
    API_KEY = "api_key"


class GroupBy(StrEnum):
    DAY = "day"
    CATEGORY = "category"
    MARKET = "market"
    API_KEY = "api_key"


class EstimateOut(BaseModel):
    """What the gate expected Meta to charge when the send left."""

    category: str = Field(
        description="marketing, utility, authentication or service (free-form)", examples=["utility"]
    )
    market: str = Field(description="Meta's market, from the recipient's calling code", examples=["Brazil"])
    billable: bool = Field(description="Whether Meta is expected to charge it", examples=[True])
    amount: Money = Field(description="Expected charge; 0 when free", examples=["0.007000"])
    currency: str = Field(description="The rate card's currency", examples=["USD"])
    rate: Money | None = Field(
        description="The card's list rate for this market and category", examples=["0.0070"]
    )
    type: str = Field(
        description="In Meta's words: regular, free_customer_service or free_entry_point",
        examples=["regular"],
    )
    inside_csw: bool = Field(description="Sent inside the customer service window", examples=[False])
    inside_fep: bool = Field(description="Sent inside a free-entry-point window", examples=[False])
    unsure: bool = Field(description="Decided by a billability row marked unsure", examples=[False])
    rule: str = Field(description="Why, in a line", examples=["utility outside csw: paid (since 2025-07-01)"])


class BudgetIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"monthly_limit": "250.00", "currency": "USD"}})

    monthly_limit: Money = Field(
        ge=0, description="Most estimated spend per calendar month (UTC); 0 refuses every paid send"
    )
    currency: str = Field(
        pattern=r"^[A-Z]{3}$", description="Must be the rate card's currency", examples=["USD"]
    )


EXAMPLE_BUDGET: JsonDict = {
    "scope": "phone_number",
    "scope_id": EXAMPLE_PN,
    "monthly_limit": "250.00",
    "currency": "USD",
    "month": "2026-12-01",
    "spent": "12.345000",
    "remaining": "237.655000",
    "updated_at": "2026-12-01T23:00:00Z",
}


class BudgetOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_BUDGET})

    scope: Scope = Field(description="phone_number or api_key", examples=["phone_number"])
    scope_id: str = Field(description="The phone_number_id, or the API key's id", examples=[EXAMPLE_PN])
    monthly_limit: Money = Field(description="Most estimated spend per calendar month", examples=["250.00"])
    currency: str = Field(description="Currency of limit and spend", examples=["USD"])
    month: date = Field(
        description="The current calendar month (UTC), as its first day", examples=["2026-11-01"]
    )
    spent: Money = Field(description="Estimated spend reserved this month", examples=["12.345000"])
    remaining: Money = Field(description="monthly_limit − spent, never below 0", examples=["237.655000"])
    updated_at: datetime = Field(description="When the budget was last set")


class BudgetsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "budgets": [
                    EXAMPLE_BUDGET,
                    EXAMPLE_BUDGET
                    | {
                        "scope": "api_key",
                        "scope_id": EXAMPLE_KEY,
                        "monthly_limit": "50.00",
                        "spent": "3.150000",
                        "remaining": "46.850000",
                    },
                ]
            }
        }
    )

    budgets: list[BudgetOut] = Field(description="Every budget, by scope then id")


class CostGroupOut(BaseModel):
    key: str = Field(
        description="The day (YYYY-MM-DD), category, market or API key id of this group; `other_keys`: "
        "the keys a key limited to phone numbers does not reach, together",
        examples=["2026-11-24"],
    )
    label: str | None = Field(
        description="The API key's name (group_by=api_key); null for `other_keys`", examples=[None]
    )
    messages: int = Field(
        description="Sends that left (Meta accepted them, or the outcome is unknown)", examples=[120]
    )
    not_estimated: int = Field(description="Of those, sends recorded without an estimate", examples=[0])
    estimated_billable: int = Field(description="Sends the gate expected Meta to charge", examples=[80])
    estimated_amount: Money = Field(description="Sum of the gate's estimates", examples=["0.560000"])
    sent_free: int = Field(
        description="Sends the gate expected to be free (service, utility in the window, free entry point)",
        examples=[40],
    )
    reported: int = Field(description="Sends Meta's status webhooks reported pricing for", examples=[118])
    reported_billable: int = Field(description="Of those, the ones Meta says it charges", examples=[79])
    reported_free: int = Field(description="Of those, the ones Meta says are free", examples=[39])
    reported_amount: Money = Field(
        description="Meta's billable sends priced with the rate card (category Meta reported, day sent)",
        examples=["0.553000"],
    )
    reported_billable_by_category: dict[str, int] = Field(
        description="Meta's billable sends by the category Meta reported",
        examples=[{"marketing": 12, "utility": 67}],
    )


class CostsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "phone_number_id": EXAMPLE_PN,
                "from_date": "2026-11-01",
                "to_date": "2026-11-30",
                "group_by": "category",
                "currency": "USD",
                "rate_card": ["rate_card_EXAMPLE_USD.csv"],
                "groups": [
                    {
                        "key": "marketing",
                        "label": None,
                        "messages": 12,
                        "not_estimated": 0,
                        "estimated_billable": 12,
                        "estimated_amount": "0.756000",
                        "sent_free": 0,
                        "reported": 12,
                        "reported_billable": 12,
                        "reported_free": 0,
                        "reported_amount": "0.756000",
                        "reported_billable_by_category": {"marketing": 12},
                    },
                    {
                        "key": "service",
                        "label": None,
                        "messages": 108,
                        "not_estimated": 0,
                        "estimated_billable": 0,
                        "estimated_amount": "0.000000",
                        "sent_free": 108,
                        "reported": 106,
                        "reported_billable": 0,
                        "reported_free": 106,
                        "reported_amount": "0.000000",
                        "reported_billable_by_category": {},
                    },
                ],
                "totals": {
                    "key": "total",
                    "label": None,
                    "messages": 120,
                    "not_estimated": 0,
                    "estimated_billable": 12,
                    "estimated_amount": "0.756000",
                    "sent_free": 108,
                    "reported": 118,
                    "reported_billable": 12,
                    "reported_free": 106,
                    "reported_amount": "0.756000",
                    "reported_billable_by_category": {"marketing": 12},
                },
            }
        }
    )

    phone_number_id: str | None = Field(
        description="The number asked for; null: every number the key may see", examples=[EXAMPLE_PN]
    )
    from_date: date = Field(description="First day included (UTC)", examples=["2026-11-01"])
    to_date: date = Field(description="Last day included (UTC)", examples=["2026-11-30"])
    group_by: GroupBy = Field(description="day, category, market or api_key", examples=["day"])
    currency: str = Field(description="The rate card's currency", examples=["USD"])
    rate_card: list[str] = Field(
        description="The rate-card files the amounts come from (an EXAMPLE card is not Meta's prices)",
        examples=[["rates/USD_2026-10-01.csv"]],
    )
    groups: list[CostGroupOut] = Field(description="One entry per group, ordered by key")
    totals: CostGroupOut = Field(description="All groups together (key `total`)")
