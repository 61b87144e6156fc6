"""The costs report over recorded sends, and the budget admin API, on real PostgreSQL."""

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import assert_problem, cli_env, make_key
from tests.factories import PN
from window_gate.apikey import service as api_keys
from window_gate.apikey.rules import Role
from window_gate.errors import BudgetExceeded
from window_gate.pricing import repository, service

OTHER_PN = "999000111222333"
INSERT = text(
    """
INSERT INTO messages (id, api_key_id, request_hash, phone_number_id, recipient_input, type, body, status,
                      graph_message_id, pricing, created_at, pricing_category, market, billable, estimated_amount,
                      currency, inside_csw, inside_fep)
VALUES (:id, :api_key_id, 'x', :pn, :to, :type, '{}', :status, :wamid, CAST(:pricing AS jsonb), :at, :category,
        :market, :billable, :amount, 'USD', :csw, :fep)
"""
)
REGULAR = {"billable": True, "pricing_model": "PMP", "type": "regular"}
FREE_CSW = {"billable": False, "pricing_model": "PMP", "type": "free_customer_service"}


async def key_id(engine: AsyncEngine, name: str) -> str:
    async with engine.begin() as conn:
        await api_keys.create(conn, name, Role.SEND)
        return str(
            (await conn.execute(text("SELECT id FROM api_keys WHERE name = :n"), {"n": name})).scalar_one()
        )


async def seed(
    engine: AsyncEngine,
    key: str,
    day: int,
    category: str,
    market: str,
    amount: str | None,
    *,
    pricing: dict[str, Any] | None = None,
    status: str = "delivered",
    left: bool = True,
    pn: str = PN,
    month: int = 11,
    fep: bool = False,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            INSERT,
            {
                "id": uuid.uuid4(),
                "api_key_id": key,
                "pn": pn,
                "to": "+1",
                "type": "text" if category == "service" else "template",
                "status": status,
                "wamid": f"wamid.{uuid.uuid4().hex}" if left else None,
                "pricing": orjson.dumps(pricing).decode() if pricing else None,
                "at": datetime(2026, month, day, 15, tzinfo=UTC),
                "category": category,
                "market": market,
                "billable": None if amount is None else Decimal(amount) > 0,
                "amount": None if amount is None else Decimal(amount),
                "csw": category in ("service", "utility") and amount == "0",
                "fep": fep,
            },
        )


@pytest.fixture
async def seeded(engine: AsyncEngine) -> tuple[str, str]:
    """Two keys' sends in November 2026 (amounts from the bundled EXAMPLE card), plus some that must not count."""
    a, b = await key_id(engine, "shop"), await key_id(engine, "billing")
    await seed(engine, a, 2, "marketing", "Brazil", "0.0630", pricing=REGULAR | {"category": "marketing"})
    await seed(engine, a, 2, "utility", "Brazil", "0", pricing=FREE_CSW | {"category": "utility"})
    await seed(engine, b, 2, "service", "India", "0", pricing=FREE_CSW | {"category": "service"})
    await seed(engine, b, 3, "utility", "North America", "0.0034", pricing=REGULAR | {"category": "utility"})
    # Sent inside a free-entry-point window: Meta's older shape, `billable` without `type`.
    fep = {"billable": False, "pricing_model": "PMP", "category": "referral_conversion"}
    await seed(engine, a, 3, "marketing", "Brazil", "0", pricing=fep, fep=True)
    await seed(engine, a, 3, "marketing", "United Kingdom", "0.0530", status="accepted")  # no webhook yet
    await seed(engine, a, 3, "marketing", "Brazil", "0.0630", status="unknown", left=False)  # may have left
    # Not counted: refused before leaving, another number, outside the period.
    await seed(engine, a, 3, "marketing", "Brazil", "0.0630", status="not_sent", left=False)
    await seed(
        engine,
        a,
        3,
        "marketing",
        "Brazil",
        "0.0630",
        pn=OTHER_PN,
        pricing=REGULAR | {"category": "marketing"},
    )
    await seed(
        engine, a, 31, "marketing", "Brazil", "0.0630", month=10, pricing=REGULAR | {"category": "marketing"}
    )
    return a, b


async def costs(client: httpx.AsyncClient, group_by: str, **params: str) -> dict[str, Any]:
    query = {"phone_number_id": PN, "from": "2026-11-01", "to": "2026-11-30", "group_by": group_by} | params
    r = await client.get("/v1/costs", params=query)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def money(value: str) -> Decimal:
    return Decimal(value)


async def test_costs_totals_estimated_reported_and_free(
    gate: tuple[httpx.AsyncClient, AsyncEngine], seeded: Any
) -> None:
    client, _ = gate
    report = await costs(client, "day")
    assert report["currency"] == "USD" and report["rate_card"] == ["rate_card_EXAMPLE_USD.csv"]
    assert (report["from_date"], report["to_date"], report["phone_number_id"]) == (
        "2026-11-01",
        "2026-11-30",
        PN,
    )
    totals = report["totals"]
    assert totals["key"] == "total" and totals["messages"] == 7 and totals["not_estimated"] == 0
    assert totals["estimated_billable"] == 4 and money(totals["estimated_amount"]) == Decimal("0.1824")
    assert totals["sent_free"] == 3
    assert (totals["reported"], totals["reported_billable"], totals["reported_free"]) == (5, 2, 3)
    # Meta's billable sends priced with the card: Brazil marketing + North America utility.
    assert money(totals["reported_amount"]) == Decimal("0.0664")
    assert totals["reported_billable_by_category"] == {"marketing": 1, "utility": 1}


async def test_costs_group_by_day(gate: tuple[httpx.AsyncClient, AsyncEngine], seeded: Any) -> None:
    groups = {g["key"]: g for g in (await costs(gate[0], "day"))["groups"]}
    assert list(groups) == ["2026-11-02", "2026-11-03"]
    assert groups["2026-11-02"]["messages"] == 3 and groups["2026-11-02"]["sent_free"] == 2
    assert money(groups["2026-11-02"]["estimated_amount"]) == Decimal("0.0630")
    assert groups["2026-11-03"]["messages"] == 4
    assert money(groups["2026-11-03"]["estimated_amount"]) == Decimal("0.1194")
    assert money(groups["2026-11-03"]["reported_amount"]) == Decimal("0.0034")


async def test_costs_group_by_category(gate: tuple[httpx.AsyncClient, AsyncEngine], seeded: Any) -> None:
    groups = {g["key"]: g for g in (await costs(gate[0], "category"))["groups"]}
    assert {k: g["messages"] for k, g in groups.items()} == {"marketing": 4, "service": 1, "utility": 2}
    assert groups["marketing"]["sent_free"] == 1 and groups["marketing"]["estimated_billable"] == 3
    assert groups["utility"]["reported_billable_by_category"] == {"utility": 1}


async def test_costs_group_by_market(gate: tuple[httpx.AsyncClient, AsyncEngine], seeded: Any) -> None:
    groups = {g["key"]: g for g in (await costs(gate[0], "market"))["groups"]}
    assert {k: g["messages"] for k, g in groups.items()} == {
        "Brazil": 4,
        "India": 1,
        "North America": 1,
        "United Kingdom": 1,
    }
    assert money(groups["Brazil"]["estimated_amount"]) == Decimal("0.1260")
    assert groups["Brazil"]["reported_free"] == 2


async def test_costs_group_by_api_key(
    gate: tuple[httpx.AsyncClient, AsyncEngine], seeded: tuple[str, str]
) -> None:
    shop, billing = seeded
    groups = {g["key"]: g for g in (await costs(gate[0], "api_key"))["groups"]}
    assert groups[shop]["label"] == "shop" and groups[shop]["messages"] == 5
    assert groups[billing]["label"] == "billing" and groups[billing]["messages"] == 2
    assert money(groups[billing]["estimated_amount"]) == Decimal("0.0034")


async def test_costs_of_every_number_and_narrow_periods(
    gate: tuple[httpx.AsyncClient, AsyncEngine], seeded: Any
) -> None:
    client, _ = gate
    r = await client.get("/v1/costs", params={"group_by": "day", "from": "2026-10-01", "to": "2026-11-30"})
    assert r.status_code == 200 and r.json()["phone_number_id"] is None
    assert r.json()["totals"]["messages"] == 9  # both numbers, October too
    one_day = await costs(client, "market", **{"from": "2026-11-03", "to": "2026-11-03"})
    assert one_day["totals"]["messages"] == 4


async def test_costs_access_and_validation(gate: tuple[httpx.AsyncClient, AsyncEngine], seeded: Any) -> None:
    client, engine = gate
    reader = {"Authorization": f"Bearer {await make_key(engine, Role.READ, (OTHER_PN,))}"}
    r = await client.get("/v1/costs", params={"group_by": "day", "phone_number_id": PN}, headers=reader)
    assert_problem(r, 403, "forbidden")
    # Without a number, a key limited to some numbers sees only those.
    mine = await client.get(
        "/v1/costs", params={"group_by": "day", "from": "2026-11-01", "to": "2026-11-30"}, headers=reader
    )
    assert mine.status_code == 200 and mine.json()["totals"]["messages"] == 1
    assert_problem(await client.get("/v1/costs"), 422, "validation_error")  # group_by is required
    assert_problem(await client.get("/v1/costs", params={"group_by": "week"}), 422, "validation_error")
    backwards = await client.get(
        "/v1/costs", params={"group_by": "day", "from": "2026-11-05", "to": "2026-11-01"}
    )
    assert_problem(backwards, 422, "validation_error")
    too_long = await client.get(
        "/v1/costs", params={"group_by": "day", "from": "2025-01-01", "to": "2026-11-01"}
    )
    assert_problem(too_long, 422, "validation_error")
    assert_problem(
        await client.get(
            "/v1/costs", params={"group_by": "day"}, headers={"Authorization": "Bearer wg_nope"}
        ),
        401,
        "unauthorized",
    )


async def test_costs_default_period_is_this_month(gate: tuple[httpx.AsyncClient, AsyncEngine]) -> None:
    r = await gate[0].get("/v1/costs", params={"group_by": "category"})
    today = datetime.now(UTC).date()
    assert r.status_code == 200 and r.json()["from_date"] == today.replace(day=1).isoformat()
    assert r.json()["to_date"] == today.isoformat() and r.json()["groups"] == []


# ---------------------------------------------------------------------------------------------------------
# Budgets API


async def test_budgets_set_list_and_delete(gate: tuple[httpx.AsyncClient, AsyncEngine]) -> None:
    client, engine = gate
    key = await key_id(engine, "campaigns")
    r = await client.put(f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": "10.50", "currency": "USD"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["scope"], body["scope_id"], money(body["monthly_limit"]), money(body["spent"])) == (
        "phone_number",
        PN,
        Decimal("10.50"),
        Decimal(0),
    )
    assert money(body["remaining"]) == Decimal("10.50") and body["month"].endswith("-01")
    raised = await client.put(f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": 12, "currency": "USD"})
    assert money(raised.json()["monthly_limit"]) == 12
    assert (
        await client.put(f"/v1/budgets/api_key/{key}", json={"monthly_limit": "1", "currency": "USD"})
    ).status_code == 200

    async with engine.begin() as conn:
        await service.reserve(
            conn,
            phone_number_id=PN,
            api_key_id=key,
            amount=Decimal("0.25"),
            currency="USD",
            at=datetime.now(UTC),
        )
    listed = (await client.get("/v1/budgets")).json()["budgets"]
    assert [(b["scope"], b["scope_id"]) for b in listed] == [("api_key", key), ("phone_number", PN)]
    assert [money(b["spent"]) for b in listed] == [Decimal("0.25"), Decimal("0.25")]
    assert money(listed[0]["remaining"]) == Decimal("0.75")

    assert (await client.delete(f"/v1/budgets/api_key/{key}")).status_code == 204
    assert_problem(await client.delete(f"/v1/budgets/api_key/{key}"), 404, "not_found")
    assert len((await client.get("/v1/budgets")).json()["budgets"]) == 1


async def test_budget_put_refusals(gate: tuple[httpx.AsyncClient, AsyncEngine]) -> None:
    client, engine = gate
    good = {"monthly_limit": "5", "currency": "USD"}
    wrong_currency = await client.put(
        f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": "5", "currency": "EUR"}
    )
    assert assert_problem(wrong_currency, 422, "validation_error")["rate_card_currency"] == "USD"
    assert_problem(
        await client.put(f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": "-1", "currency": "USD"}),
        422,
        "validation_error",
    )
    assert_problem(
        await client.put(
            f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": "0.0000001", "currency": "USD"}
        ),
        422,
        "validation_error",
    )
    assert_problem(await client.put(f"/v1/budgets/team/{PN}", json=good), 422, "validation_error")
    assert_problem(await client.put("/v1/budgets/api_key/not-a-uuid", json=good), 422, "validation_error")
    assert_problem(await client.put(f"/v1/budgets/api_key/{uuid.uuid4()}", json=good), 404, "not_found")
    sender = {"Authorization": f"Bearer {await make_key(engine, Role.SEND)}"}
    assert_problem(
        await client.put(f"/v1/budgets/phone_number/{PN}", json=good, headers=sender), 403, "forbidden"
    )
    assert_problem(await client.get("/v1/budgets", headers=sender), 403, "forbidden")


async def test_budget_set_through_the_api_refuses_the_reservation_past_it(
    gate: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    client, engine = gate
    await client.put(f"/v1/budgets/phone_number/{PN}", json={"monthly_limit": "0.10", "currency": "USD"})
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await service.reserve(
            conn, phone_number_id=PN, api_key_id="k", amount=Decimal("0.06"), currency="USD", at=now
        )
    with pytest.raises(BudgetExceeded, match="would take the phone_number budget"):
        async with engine.begin() as conn:
            await service.reserve(
                conn, phone_number_id=PN, api_key_id="k", amount=Decimal("0.06"), currency="USD", at=now
            )
    listed = (await client.get("/v1/budgets")).json()["budgets"]
    assert money(listed[0]["spent"]) == Decimal("0.06")


@pytest.mark.slow  # the CLI as a process
async def test_cli_budgets_set(gate: tuple[httpx.AsyncClient, AsyncEngine], database_url: str) -> None:
    client, _ = gate
    env = cli_env(DATABASE_URL=database_url, SANDBOX="true")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "window-gate"), "budgets", "set", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    done = await asyncio.to_thread(run, "phone_number", PN, "--limit", "7.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"phone_number {PN}: 7.500000 USD a month, 0.000000 spent in ")
    [budget] = (await client.get("/v1/budgets")).json()["budgets"]
    assert money(budget["monthly_limit"]) == Decimal("7.5")
    missing = await asyncio.to_thread(run, "api_key", str(uuid.uuid4()), "--limit", "1")
    assert missing.returncode == 1 and "no API key" in missing.stderr
    euros = await asyncio.to_thread(run, "phone_number", PN, "--limit", "1", "--currency", "EUR")
    assert euros.returncode == 1 and "rate card's currency, USD" in euros.stderr


async def test_the_free_tier_count_stops_at_the_tier(engine: AsyncEngine) -> None:
    """A busy number's month is counted only as far as the free tier needs (`paid_after:N`)."""
    key = await key_id(engine, "tier")
    for day in (2, 3, 4):
        await seed(engine, key, day, "service", "Brazil", "0")
    await seed(engine, key, 5, "service", "Brazil", "0", month=10)  # another month
    start, end = service.month_bounds(datetime(2026, 11, 20, tzinfo=UTC))
    async with engine.connect() as conn:
        assert await repository.sent_this_month(conn, PN, "service", start, end, 1000) == 3
        assert await repository.sent_this_month(conn, PN, "service", start, end, 2) == 2


async def test_reported_cost_of_a_split_market_at_its_former_regions_rate(
    gate: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    """Meta billed a Bangladesh service message; the EXAMPLE card predates the split and has no Service
    rate: the report prices it at Rest of Asia Pacific's utility rate, not Other's."""
    client, engine = gate
    key = await key_id(engine, "dhaka")
    await seed(engine, key, 2, "service", "Bangladesh", "0.0113", pricing=REGULAR | {"category": "service"})
    report = await costs(client, "market")
    assert money(report["totals"]["reported_amount"]) == Decimal("0.0113")
