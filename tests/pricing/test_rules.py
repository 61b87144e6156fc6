"""Pricing as data: the billability matrix cell by cell, markets by calling code, Meta's rate-card CSV,
and budgets that hold when replicas reserve at the same instant (real PostgreSQL)."""

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from window_gate.config import SettingsError, load_settings
from window_gate.errors import BudgetExceeded
from window_gate.message import repository as messages
from window_gate.pricing import repository, service
from window_gate.pricing.rules import (
    OTHER,
    Category,
    PricingDataError,
    RateCard,
    Tables,
    estimate,
    marketing_restriction,
    message_category,
    parse_markets,
    parse_matrix,
    parse_rate_card,
    parse_restrictions,
)
from window_gate.pricing.tables import (
    EXAMPLE_RATE_CARD,
    MARKETS,
    MATRIX,
    RESTRICTIONS,
    bundled,
    configured,
    load_tables,
)
from window_gate.window.rule import WindowState
from window_gate.window.schemas import CustomerOut, FreeEntryPointOut, WindowOut

# The layout of Meta's download: free text naming the date, a header whose last-but-one column spans two
# lines, `$US` for dollars, `n/a` where a market has no such rate.
CARD = """Cost per message in USD, effective July 1, 2025,,,,,,
Market,Currency,Marketing,Utility,Authentication,"Authentication-
International",Service
Brazil,$US,0.0625,0.0068,0.0068,n/a,n/a
India,$US,0.0107,0.0014,0.0014,0.0280,n/a
North America,$US,0.0250,0.0034,0.0034,n/a,n/a
United Kingdom,$US,0.0529,0.0220,0.0220,n/a,n/a
Other,$US,0.0604,0.0077,0.0077,n/a,0.0040
"""
BRAZIL = "5511987654321"
NOV_2026 = datetime(2026, 11, 25, 12, tzinfo=UTC)


def tables(*, apply_unsure: bool = False, card: str = CARD) -> Tables:
    return Tables(
        card=RateCard.of([parse_rate_card(card, "card.csv")]),
        matrix=parse_matrix(bundled(MATRIX), MATRIX, apply_unsure=apply_unsure),
        markets=parse_markets(bundled(MARKETS), MARKETS),
        restrictions=parse_restrictions(bundled(RESTRICTIONS), RESTRICTIONS),
    )


# ---------------------------------------------------------------------------------------------------------
# The billability matrix (docs/meta-rules.md: pricing), every cell


@pytest.mark.parametrize(
    ("category", "inside_csw", "inside_fep", "billable", "pricing_type"),
    [
        ("MARKETING", False, False, True, "regular"),
        ("MARKETING", True, False, True, "regular"),
        ("MARKETING", True, True, False, "free_entry_point"),
        ("MARKETING", False, True, False, "free_entry_point"),  # the CSW closed, the FEP still runs
        ("AUTHENTICATION", False, False, True, "regular"),
        ("AUTHENTICATION", True, False, True, "regular"),
        ("AUTHENTICATION", True, True, False, "free_entry_point"),
        ("UTILITY", False, False, True, "regular"),
        ("UTILITY", True, False, False, "free_customer_service"),
        ("UTILITY", True, True, False, "free_entry_point"),
        (None, True, False, False, "free_customer_service"),
        (None, True, True, False, "free_entry_point"),
    ],
)
def test_each_matrix_cell(
    category: str | None, inside_csw: bool, inside_fep: bool, billable: bool, pricing_type: str
) -> None:
    est = estimate(
        tables(),
        category=category,
        recipient=BRAZIL,
        inside_csw=inside_csw,
        inside_fep=inside_fep,
        at=NOV_2026,
    )
    assert (est.billable, est.pricing_type, est.allowed) == (billable, pricing_type, True)
    assert est.amount == (est.rate if billable else Decimal(0)) and est.currency == "USD"
    assert est.market == "Brazil" and not est.unsure


def test_free_form_outside_the_window_is_not_allowed_and_costs_nothing() -> None:
    est = estimate(tables(), category=None, recipient=BRAZIL, inside_csw=False, inside_fep=False, at=NOV_2026)
    assert est.category is Category.SERVICE and not est.allowed and not est.billable
    assert est.amount == 0 and "not_allowed" in est.rule


def test_template_prices_come_from_the_card_by_market_and_category() -> None:
    t = tables()
    cases = {
        ("MARKETING", BRAZIL): Decimal("0.0625"),
        ("UTILITY", "+1 415 555 0100"): Decimal("0.0034"),
        ("AUTHENTICATION", "+91 98765 43210"): Decimal("0.0014"),  # not the international rate
        ("MARKETING", "+44 7700 900123"): Decimal("0.0529"),
        ("MARKETING", "+33 6 12 34 56 78"): Decimal("0.0604"),  # France: not in this card → Other
    }
    for (category, recipient), amount in cases.items():
        est = estimate(
            t, category=category, recipient=recipient, inside_csw=False, inside_fep=False, at=NOV_2026
        )
        assert est.amount == amount, (category, recipient, est)


def test_free_entry_point_is_free_even_for_marketing_outside_the_window() -> None:
    est = estimate(
        tables(), category="marketing", recipient=BRAZIL, inside_csw=False, inside_fep=True, at=NOV_2026
    )
    assert not est.billable and est.amount == 0 and est.inside_fep and est.rate == Decimal("0.0625")


def test_utility_inside_window_free_until_the_reported_october_2026_row_is_switched_on() -> None:
    def utility_in_window(t: Tables, at: datetime) -> bool:
        return estimate(
            t, category="UTILITY", recipient=BRAZIL, inside_csw=True, inside_fep=False, at=at
        ).billable

    before, after = datetime(2026, 9, 30, 23, 59, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)
    assert not utility_in_window(tables(), after)  # unsure rows are off when the setting is
    assert not utility_in_window(tables(apply_unsure=True), before)
    assert utility_in_window(tables(apply_unsure=True), after)
    est = estimate(
        tables(apply_unsure=True),
        category="UTILITY",
        recipient=BRAZIL,
        inside_csw=True,
        inside_fep=False,
        at=after,
    )
    assert est.unsure and est.effective_from == date(2026, 10, 1) and est.amount == Decimal("0.0068")


def test_reported_service_tier_first_thousand_a_month_free() -> None:
    t = tables(apply_unsure=True)

    def service(sent: int) -> tuple[bool, Decimal]:
        est = estimate(
            t,
            category=None,
            recipient="+999 555 0100",
            inside_csw=True,
            inside_fep=False,
            at=NOV_2026,
            sent_this_month=sent,
        )
        return est.billable, est.amount

    assert service(999) == (False, Decimal(0))
    assert service(1000) == (True, Decimal("0.0040"))  # the card's Service column, market Other
    assert estimate(
        t,
        category=None,
        recipient=BRAZIL,
        inside_csw=True,
        inside_fep=True,
        at=NOV_2026,
        sent_this_month=5000,
    ).amount == Decimal(0)  # the free entry point stays free


def test_october_2026_rows_apply_by_default_and_the_setting_turns_them_off() -> None:
    def utility_in_window(t: Tables) -> bool:
        return estimate(
            t, category="UTILITY", recipient=BRAZIL, inside_csw=True, inside_fep=False, at=NOV_2026
        ).billable

    assert utility_in_window(configured(load_settings(sandbox=True)))
    assert not utility_in_window(configured(load_settings(sandbox=True, pricing_apply_unsure=False)))


def test_service_priced_from_the_cards_service_column_else_the_utility_rate() -> None:
    def service(card: str, recipient: str) -> Decimal | None:
        est = estimate(
            tables(apply_unsure=True, card=card),
            category=None,
            recipient=recipient,
            inside_csw=True,
            inside_fep=False,
            at=NOV_2026,
            sent_this_month=1000,
        )
        assert est.billable and est.amount == (est.rate or 0)
        return est.rate

    assert service(CARD, "+999 555 0100") == Decimal("0.0040")  # Other has a Service rate
    assert service(CARD, BRAZIL) == Decimal("0.0068")  # n/a: Brazil's utility rate
    no_column = CARD.replace(',"Authentication-\nInternational",Service', ',"Authentication-\nInternational"')
    no_column = "\n".join(
        line.rpartition(",")[0] if line.count(",") == 6 else line for line in no_column.splitlines()
    )
    assert "Service" not in no_column
    assert service(no_column, "+999 555 0100") == Decimal("0.0077")  # no column: Other's utility rate


def test_template_category_names() -> None:
    assert message_category("MARKETING") is Category.MARKETING
    assert message_category("utility") is Category.UTILITY
    assert message_category(None) is Category.SERVICE
    for bad in ("SERVICE", "PROMO"):
        with pytest.raises(ValueError, match="category"):
            message_category(bad)


# ---------------------------------------------------------------------------------------------------------
# Markets from the calling code


@pytest.mark.parametrize(
    ("recipient", "market"),
    [
        ("+1 415 555 0100", "North America"),
        ("14155550100", "North America"),
        ("+1 (876) 555-0100", "Rest of Latin America"),  # Jamaica: +1 but not North America
        ("+1 787 555 0100", "Rest of Latin America"),  # Puerto Rico
        ("+1 242 555 0100", OTHER),  # Bahamas
        ("+55 11 98765-4321", "Brazil"),
        ("551187654321", "Brazil"),
        ("+91 98765 43210", "India"),
        ("+44 7700 900123", "United Kingdom"),
        ("0044 7700 900123", "United Kingdom"),
        ("+7 495 123 4567", "Russia"),
        ("+7 701 123 4567", OTHER),  # Kazakhstan shares +7
        ("+254 712 345678", "Rest of Africa"),
        ("+351 912 345 678", "Rest of Western Europe"),
        ("+999 123 4567", OTHER),
        ("US.13491208655302741918", "North America"),  # a BSUID carries its country
        ("ZZ.1234", OTHER),
    ],
)
def test_market_from_calling_code(recipient: str, market: str) -> None:
    assert tables().markets.lookup(recipient, SEP_2026).name == market


SEP_2026, OCT_2026 = date(2026, 9, 30), date(2026, 10, 1)
SPLIT_OUT = [
    ("+880 1712 345678", "Bangladesh", "Rest of Asia Pacific"),
    ("+964 770 123 4567", "Iraq", "Rest of Middle East"),
    ("+977 984 1234567", "Nepal", "Rest of Asia Pacific"),
    ("+94 71 234 5678", "Sri Lanka", "Rest of Asia Pacific"),
    ("+7 701 123 4567", "Kazakhstan", OTHER),
    ("+7 601 123 4567", "Kazakhstan", OTHER),
    ("+965 5012 3456", "Kuwait", "Rest of Middle East"),
    ("+212 612 345678", "Morocco", "Rest of Africa"),
    ("+968 9212 3456", "Oman", "Rest of Middle East"),
    ("+380 50 123 4567", "Ukraine", "Rest of Central & Eastern Europe"),
]


@pytest.mark.parametrize(("recipient", "market", "region"), SPLIT_OUT)
def test_nine_markets_stand_alone_from_october_2026(recipient: str, market: str, region: str) -> None:
    markets = tables().markets
    assert markets.lookup(recipient, SEP_2026).name == region
    assert markets.lookup(recipient, OCT_2026).name == market
    assert markets.lookup(recipient).name == market  # no day: the newest rows
    assert markets.fallbacks(market) == (region,)


def test_a_split_market_pays_its_former_regions_rate_until_the_card_names_it() -> None:
    card = CARD.replace("Other,$US", "Rest of Asia Pacific,$US,0.0730,0.0113,0.0113,n/a,n/a\nOther,$US")
    before = estimate(
        tables(card=card),
        category="UTILITY",
        recipient="+880 1712 345678",
        inside_csw=False,
        inside_fep=False,
        at=datetime(2026, 9, 30, 12, tzinfo=UTC),
    )
    after = estimate(
        tables(card=card),
        category="UTILITY",
        recipient="+880 1712 345678",
        inside_csw=False,
        inside_fep=False,
        at=NOV_2026,
    )
    assert (before.market, before.amount) == ("Rest of Asia Pacific", Decimal("0.0113"))
    assert (after.market, after.amount) == ("Bangladesh", Decimal("0.0113"))  # not Other's 0.0077
    named = card.replace("Other,$US", "Bangladesh,$US,0.0700,0.0050,0.0050,0.0900,n/a\nOther,$US")
    assert estimate(
        tables(card=named),
        category="UTILITY",
        recipient="+880 1712 345678",
        inside_csw=False,
        inside_fep=False,
        at=NOV_2026,
    ).amount == Decimal("0.0050")


def test_every_market_of_the_table_is_in_the_example_card_and_back() -> None:
    t = load_tables(None, None, False)
    card_markets = {m for m, _ in t.card.editions[0].rates}
    table_markets = {m.name for rows in t.markets.by_calling_code.values() for m in rows}
    priced = {m for m in table_markets if m in card_markets or set(t.markets.fallbacks(m)) & card_markets}
    assert priced == table_markets and card_markets - table_markets == set()
    assert t.card.sources == [EXAMPLE_RATE_CARD] and "EXAMPLE" in bundled(EXAMPLE_RATE_CARD).splitlines()[0]


@pytest.mark.parametrize(
    ("recipient", "iso2"),
    [
        ("+1 415 555 0100", "US"),
        ("+1 212 555 0100", "US"),
        ("+1 416 555 0100", "CA"),  # Toronto
        ("+1 604 555 0100", "CA"),  # Vancouver
        ("+1 876 555 0100", "JM"),
        ("+1 787 555 0100", "PR"),
        ("CA.13491208655302741918", "CA"),
    ],
)
def test_plus_one_numbers_resolve_to_their_country_by_area_code(recipient: str, iso2: str) -> None:
    market = tables().markets.lookup(recipient)
    assert market.iso2 == iso2
    assert market.name in ("North America", "Rest of Latin America")


@pytest.mark.parametrize(
    "edit",
    [
        ("880,BD,Bangladesh,Bangladesh,2026-10-01", "880,BD,Bangladesh,Bangladesh,2026-13-01"),
        ("880,BD,Bangladesh,Bangladesh,2026-10-01", "880,BD,Bangladesh,Bangladesh,"),
    ],
)
def test_malformed_market_row_names_the_line(edit: tuple[str, str]) -> None:
    bad = bundled(MARKETS).replace(*edit)
    line = next(i for i, row in enumerate(bad.splitlines(), 1) if row == edit[1])
    with pytest.raises(PricingDataError, match=rf"m\.csv, line {line}: "):
        parse_markets(bad, "m.csv")


# ---------------------------------------------------------------------------------------------------------
# Where Meta does not deliver marketing templates

US = "+1 415 555 0100"


@pytest.mark.parametrize(
    ("recipient", "at", "restricted"),
    [
        (US, datetime(2025, 3, 31, 23, 59, tzinfo=UTC), False),  # the day before the row
        (US, datetime(2025, 4, 1, tzinfo=UTC), True),
        (US, NOV_2026, True),
        ("14155550100", NOV_2026, True),
        ("US.13491208655302741918", NOV_2026, True),  # a BSUID carries its country
        ("+1 416 555 0100", NOV_2026, False),  # Canada shares +1, not the restriction
        ("+1 787 555 0100", NOV_2026, False),  # Puerto Rico: its own row in markets.csv
        (BRAZIL, NOV_2026, False),
    ],
)
def test_marketing_to_us_numbers_restricted_from_april_2025(
    recipient: str, at: datetime, restricted: bool
) -> None:
    found = marketing_restriction(tables(), recipient, at)
    assert (found is not None) == restricted
    if found is not None:
        market, row = found
        assert (market.iso2, row.country, row.effective_from) == ("US", "US", date(2025, 4, 1))


def test_marketing_restrictions_end_on_their_last_day_and_the_setting_turns_them_off() -> None:
    ended = bundled(RESTRICTIONS).replace("2025-04-01,,US", "2025-04-01,2026-06-30,US")
    t = tables()
    t = Tables(t.card, t.matrix, t.markets, parse_restrictions(ended, RESTRICTIONS))
    assert marketing_restriction(t, US, datetime(2026, 6, 30, 23, tzinfo=UTC)) is not None
    assert marketing_restriction(t, US, datetime(2026, 7, 1, tzinfo=UTC)) is None
    assert marketing_restriction(configured(load_settings(sandbox=True)), US, NOV_2026) is not None
    off = configured(load_settings(sandbox=True, marketing_restrictions=False))
    assert marketing_restriction(off, US, NOV_2026) is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("2025-04-01,,US", "2025-04-31,,US"), "day is out of range"),
        (("2025-04-01,,US", "2025-04-01,,USA"), "'USA' is not a two-letter code"),
        (("2025-04-01,,US", "2025-04-01,2025-03-01,US"), "effective_to is before effective_from"),
    ],
)
def test_malformed_restriction_names_the_line(edit: tuple[str, str], message: str) -> None:
    bad = bundled(RESTRICTIONS).replace(*edit)
    line = next(i for i, row in enumerate(bad.splitlines(), 1) if row.startswith(edit[1]))
    with pytest.raises(PricingDataError, match=rf"r\.csv, line {line}: .*{message}"):
        parse_restrictions(bad, "r.csv")


# ---------------------------------------------------------------------------------------------------------
# Meta's rate-card CSV


def test_rate_card_in_metas_layout() -> None:
    edition = parse_rate_card(CARD, "card.csv")
    assert edition.effective_from == date(2025, 7, 1) and edition.currency == "USD"
    assert edition.rates[("India", Category.AUTHENTICATION_INTERNATIONAL)] == Decimal("0.0280")
    assert edition.rates[("Brazil", Category.AUTHENTICATION_INTERNATIONAL)] is None
    assert edition.rates[("Other", Category.SERVICE)] == Decimal("0.0040")


def test_rate_card_effective_date_from_iso_text_or_given() -> None:
    iso = CARD.replace("effective July 1, 2025", "effective 2026-10-01")
    assert parse_rate_card(iso, "c").effective_from == date(2026, 10, 1)
    assert parse_rate_card(CARD, "c", date(2027, 1, 1)).effective_from == date(2027, 1, 1)
    undated = CARD.split("\n", 1)[1]
    with pytest.raises(PricingDataError, match=r"no effective date.*PATH@2025-07-01"):
        parse_rate_card(undated, "c")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("Brazil,$US,0.0625,0.0068", "Brazil,$US,0.0625,abc"),
            r"card\.csv, line 4: utility rate 'abc' is not a price",
        ),
        (("India,$US,0.0107,0.0014,0.0014,0.0280,n/a", "India,$US,0.0107"), r"card\.csv, line 5: 3 columns"),
        (
            ("United Kingdom,$US", "United Kingdom,EUR"),
            r"card\.csv, line 7: currency EUR, the card is in USD",
        ),
        (("India,$US", "Brazil,$US"), r"card\.csv, line 5: market 'Brazil' appears twice"),
        (("North America,$US,0.0250", "North America,$US,-1"), r"line 6: marketing rate '-1' is not a price"),
        (("Other,$US", "Elsewhere,$US"), r"no 'Other' row"),
        (("Market,Currency,Marketing", "Country,Currency,Marketing"), r"no header row"),
        (("Utility,Authentication", "Utilities,Authentication"), r"line 2: the header lacks utility"),
    ],
)
def test_malformed_rate_card_names_the_line(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(PricingDataError, match=message):
        parse_rate_card(CARD.replace(*edit), "card.csv")


def test_editions_switch_on_their_effective_date() -> None:
    october = CARD.replace("July 1, 2025", "October 1, 2026").replace(
        "Brazil,$US,0.0625", "Brazil,$US,0.0700"
    )
    card = RateCard.of([parse_rate_card(october, "oct.csv"), parse_rate_card(CARD, "jul.csv")])
    assert card.rate("Brazil", Category.MARKETING, date(2026, 9, 30)) == Decimal("0.0625")
    assert card.rate("Brazil", Category.MARKETING, date(2026, 10, 1)) == Decimal("0.0700")
    assert card.rate("Brazil", Category.MARKETING, date(2024, 1, 1)) == Decimal("0.0625")  # oldest answers
    assert card.sources == ["jul.csv", "oct.csv"]
    eur = CARD.replace("$US", "EUR").replace("July 1, 2025", "October 1, 2026")
    with pytest.raises(PricingDataError, match="several currencies"):
        RateCard.of([parse_rate_card(CARD, "a"), parse_rate_card(eur, "b")])


def test_malformed_matrix_row_names_the_line() -> None:
    bad = bundled(MATRIX).replace("2025-07-01,utility,paid,free,free", "2025-07-01,utility,paid,gratis,free")
    line = next(i for i, row in enumerate(bad.splitlines(), 1) if "gratis" in row)
    with pytest.raises(PricingDataError, match=rf"m\.csv, line {line}: 'gratis' is not paid, free"):
        parse_matrix(bad, "m.csv")


def test_settings_point_at_real_cards_and_refuse_bad_ones(tmp_path: Path) -> None:
    july, october = tmp_path / "USD_2025-07.csv", tmp_path / "USD.csv"
    july.write_text(CARD)
    october.write_text(CARD.split("\n", 1)[1].replace("Brazil,$US,0.0625", "Brazil,$US,0.0700"))
    settings = load_settings(sandbox=True, rate_card=f"{july}, {october}@2026-10-01")
    card = configured(settings).card
    assert [e.effective_from for e in card.editions] == [date(2025, 7, 1), date(2026, 10, 1)]

    broken = tmp_path / "broken.csv"
    broken.write_text(CARD.replace("0.0014,0.0014", "0.0014,oops"))
    with pytest.raises(SettingsError, match=r"WINDOW_GATE_RATE_CARD: .*broken\.csv, line 5: authentication"):
        configured(load_settings(sandbox=True, rate_card=str(broken)))
    with pytest.raises(SettingsError, match=r"WINDOW_GATE_RATE_CARD: .*missing\.csv"):
        configured(load_settings(sandbox=True, rate_card=str(tmp_path / "missing.csv")))
    matrix = tmp_path / "matrix.csv"
    matrix.write_text(
        bundled(MATRIX).replace("2026-10-01,utility,paid,paid", "2026-10-01,utility,paid,maybe")
    )
    with pytest.raises(SettingsError, match=r"WINDOW_GATE_BILLABILITY_MATRIX: .*matrix\.csv, line \d+"):
        configured(load_settings(sandbox=True, billability_matrix=str(matrix)))


# ---------------------------------------------------------------------------------------------------------
# Window flags the send path hands to the estimate


def window(state: WindowState, fep: FreeEntryPointOut | None = None) -> WindowOut:
    return WindowOut(
        phone_number_id="1",
        customer=CustomerOut(input=BRAZIL, wa_id=BRAZIL, user_id=None),
        state=state,
        can_send_free_form=state is WindowState.OPEN,
        last_inbound_at=None,
        expires_at=None,
        safe_until=None,
        seconds_remaining=0,
        free_entry_point=fep,
    )


def test_window_flags_err_towards_paid() -> None:
    now = NOV_2026
    assert service.window_flags(window(WindowState.OPEN), now) == (True, False)
    assert service.window_flags(window(WindowState.CLOSING), now) == (False, False)
    assert service.window_flags(window(WindowState.CLOSED_BY_META), now) == (False, False)
    referral = datetime(2026, 11, 25, 8, tzinfo=UTC)
    first_reply = FreeEntryPointOut(
        active=False,
        expires_at=None,
        referral_at=referral,
        reply_by=datetime(2026, 11, 26, 8, tzinfo=UTC),
        started_at=None,
    )
    assert service.window_flags(window(WindowState.OPEN, first_reply), now) == (True, True)
    running = first_reply.model_copy(update={"active": True, "started_at": referral})
    assert service.window_flags(window(WindowState.EXPIRED, running), now) == (False, True)


def test_months_are_utc_unless_a_time_zone_is_given() -> None:
    at = datetime(2026, 11, 1, 1, tzinfo=UTC)  # still October in São Paulo (UTC−3, no summer time)
    sao_paulo = ZoneInfo("America/Sao_Paulo")
    assert service.month_of(at) == date(2026, 11, 1)
    assert service.month_of(at, sao_paulo) == date(2026, 10, 1)
    assert service.month_bounds(at) == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    start, end = service.month_bounds(at, sao_paulo)
    assert (start, end) == (datetime(2026, 10, 1, 3, tzinfo=UTC), datetime(2026, 11, 1, 3, tzinfo=UTC))


# ---------------------------------------------------------------------------------------------------------
# Budgets on real PostgreSQL

PN = "106540352242922"
KEY = "6f1c0d4e-2b7a-4f3e-9c1d-8a2b3c4d5e6f"


async def set_budget(
    conn: AsyncConnection, scope: str, scope_id: str, limit: str, currency: str = "USD"
) -> None:
    await conn.execute(
        text("INSERT INTO budgets (scope, scope_id, monthly_limit, currency) VALUES (:s, :i, :l, :c)"),
        {"s": scope, "i": scope_id, "l": Decimal(limit), "c": currency},
    )


async def spent(engine: AsyncEngine, scope: str, scope_id: str, month: date = date(2026, 11, 1)) -> Decimal:
    async with engine.connect() as conn:
        value = (
            await conn.execute(
                text("SELECT spent FROM budget_spend WHERE scope = :s AND scope_id = :i AND month = :m"),
                {"s": scope, "i": scope_id, "m": month},
            )
        ).scalar()
    return Decimal(value or 0)


async def reserve(engine: AsyncEngine, amount: str, at: datetime = NOV_2026, key: str = KEY) -> None:
    async with engine.begin() as conn:
        await service.reserve(
            conn, phone_number_id=PN, api_key_id=key, amount=Decimal(amount), currency="USD", at=at
        )


async def test_reserve_counts_spend_without_a_budget_and_refuses_past_one(engine: AsyncEngine) -> None:
    await reserve(engine, "0.04")
    assert await spent(engine, "phone_number", PN) == Decimal("0.04")
    assert await spent(engine, "api_key", KEY) == Decimal("0.04")
    async with engine.begin() as conn:
        await set_budget(conn, "phone_number", PN, "0.10")
    await reserve(engine, "0.06")  # exactly the limit
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(engine, "0.0001")
    problem = refused.value.problem()
    assert refused.value.status == 402 and problem["code"] == "budget_exceeded"
    assert {
        k: problem[k] for k in ("scope", "scope_id", "limit", "spent", "amount", "currency", "month")
    } == {
        "scope": "phone_number",
        "scope_id": PN,
        "limit": "0.100000",
        "spent": "0.100000",
        "amount": "0.0001",
        "currency": "USD",
        "month": "2026-11-01",
    }
    assert await spent(engine, "phone_number", PN) == Decimal("0.10")
    await reserve(engine, "0")  # free sends are never refused


async def test_refusal_by_the_key_budget_leaves_the_number_untouched(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await set_budget(conn, "api_key", KEY, "0.05")
    await reserve(engine, "0.05")
    with pytest.raises(BudgetExceeded, match="api_key budget"):
        await reserve(engine, "0.01")
    assert await spent(engine, "phone_number", PN) == Decimal("0.05")
    await reserve(engine, "0.01", key="another-key")  # the number has no budget; the other key neither


async def test_release_gives_back_and_months_are_separate(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await set_budget(conn, "phone_number", PN, "0.10")
    await reserve(engine, "0.10")
    async with engine.begin() as conn:
        await service.release(conn, phone_number_id=PN, api_key_id=KEY, amount=Decimal("0.04"), at=NOV_2026)
    assert await spent(engine, "phone_number", PN) == Decimal("0.06")
    await reserve(engine, "0.04")
    december = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    await reserve(engine, "0.10", at=december)
    assert await spent(engine, "phone_number", PN, date(2026, 12, 1)) == Decimal("0.10")
    async with engine.begin() as conn:
        await service.release(conn, phone_number_id=PN, api_key_id=KEY, amount=Decimal("5"), at=december)
    assert await spent(engine, "phone_number", PN, date(2026, 12, 1)) == 0  # never below zero


async def test_budget_in_another_currency_refuses_paid_sends(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await set_budget(conn, "phone_number", PN, "100", currency="EUR")
    with pytest.raises(BudgetExceeded, match="is in EUR but estimates are in USD"):
        await reserve(engine, "0.01")


async def test_two_replicas_reserving_at_once_cannot_overspend(
    engine: AsyncEngine, database_url: str
) -> None:
    """Two engines (two replicas' pools) fire 50 reservations each at one budget that allows 37."""
    async with engine.begin() as conn:
        await set_budget(conn, "phone_number", PN, "0.925")  # 37 × 0.025
    replicas = [create_async_engine(database_url, pool_size=10, max_overflow=0) for _ in range(2)]
    try:
        # Warm both pools so the reservations really overlap instead of queueing on connects.
        await asyncio.gather(*(_touch(e) for e in replicas for _ in range(10)))

        async def one(replica: AsyncEngine, n: int) -> bool:
            try:
                async with replica.begin() as conn:
                    await service.reserve(
                        conn,
                        phone_number_id=PN,
                        api_key_id=f"key-{n % 3}",
                        amount=Decimal("0.025"),
                        currency="USD",
                        at=NOV_2026,
                    )
                    await asyncio.sleep(0.002)  # the rest of a send's transaction, lock held
            except BudgetExceeded:
                return False
            return True

        results = await asyncio.gather(*(one(replicas[n % 2], n) for n in range(100)))
    finally:
        for replica in replicas:
            await replica.dispose()
    assert sum(results) == 37
    assert await spent(engine, "phone_number", PN) == Decimal("0.925")
    keys = [await spent(engine, "api_key", f"key-{i}") for i in range(3)]
    assert sum(keys, Decimal(0)) == Decimal("0.925")


async def _touch(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(0.05)"))


async def test_send_path_recipe_records_the_estimate_in_the_pending_transaction(engine: AsyncEngine) -> None:
    """What message/service.send does: estimate → record pending → reserve → record_estimate, one transaction."""
    async with engine.begin() as conn:
        await set_budget(conn, "phone_number", PN, "0.0625")
        key = str(
            (
                await conn.execute(
                    text(
                        "INSERT INTO api_keys (name, key_hash, key_prefix, role) VALUES ('k', 'h', 'wg_', 'send') RETURNING id"
                    )
                )
            ).scalar_one()
        )

    async def send(category: str | None, at: datetime) -> uuid.UUID:
        message_id = uuid.uuid4()
        async with engine.begin() as conn:
            est = await service.estimate_send(
                engine,
                tables(apply_unsure=True),
                service.FreeTiers(),
                phone_number_id=PN,
                category=category,
                recipient=BRAZIL,
                window=window(WindowState.OPEN),
                at=at,
            )
            assert await messages.insert_pending(
                conn,
                id=message_id,
                api_key_id=key,
                idempotency_key=None,
                request_hash="x",
                phone_number_id=PN,
                recipient_input=BRAZIL,
                type="template",
                body={},
                window={},
                estimate=service.estimate_columns(est),
                at=at,
            )
            await service.reserve(
                conn, phone_number_id=PN, api_key_id=key, amount=est.amount, currency=est.currency, at=at
            )
        return message_id

    sent = await send("MARKETING", NOV_2026)
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM messages WHERE id = :id"), {"id": sent})).one()
    assert (row.pricing_category, row.market, row.billable, row.currency) == (
        "marketing",
        "Brazil",
        True,
        "USD",
    )
    assert row.estimated_amount == Decimal("0.0625") and row.inside_csw is True and row.inside_fep is False
    with pytest.raises(BudgetExceeded):
        await send("MARKETING", NOV_2026)  # the budget is spent: refused, and nothing was recorded
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one() == 1
    await send(None, NOV_2026)  # a free-form reply inside the window is free: never refused

    # The reported service tier counts this month's service sends from the number (here: one).
    est = await service.estimate_send(
        engine,
        tables(apply_unsure=True),
        service.FreeTiers(),
        phone_number_id=PN,
        category=None,
        recipient=BRAZIL,
        window=window(WindowState.OPEN),
        at=NOV_2026,
    )
    assert not est.billable and "paid after 1000 a month" in est.rule


async def test_a_used_up_free_tier_is_not_counted_again_that_month(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a month's count reaches the tier, the rest of the month's free-form replies cost no query."""
    counts: list[datetime] = []

    async def used_up(_: object, __: str, ___: str, start: datetime, ____: datetime, cap: int) -> int:
        counts.append(start)
        return cap

    monkeypatch.setattr(repository, "sent_this_month", used_up)
    tiers = service.FreeTiers()
    for at in (NOV_2026, NOV_2026 + timedelta(days=1), NOV_2026 + timedelta(days=10), NOV_2026):
        est = await service.estimate_send(
            engine,
            tables(apply_unsure=True),
            tiers,
            phone_number_id=PN,
            category=None,
            recipient=BRAZIL,
            window=window(WindowState.OPEN),
            at=at,
        )
        assert est.billable
    assert [c.month for c in counts] == [NOV_2026.month, 12]  # once a month


async def test_sends_estimated_together_count_the_free_tier_once_and_each_other(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release round's free-form messages: the month's count read once, each send counting those
    before it (two left in the tier: the third is paid)."""
    counts: list[datetime] = []

    async def two_left(_: object, __: str, ___: str, start: datetime, ____: datetime, cap: int) -> int:
        counts.append(start)
        return cap - 2

    monkeypatch.setattr(repository, "sent_this_month", two_left)
    estimates = await service.estimate_sends(
        engine,
        tables(apply_unsure=True),
        service.FreeTiers(),
        phone_number_id=PN,
        sends=[(None, BRAZIL, window(WindowState.OPEN))] * 3,
        at=NOV_2026,
    )
    assert [e.billable for e in estimates] == [False, False, True] and len(counts) == 1
