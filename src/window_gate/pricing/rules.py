"""What a message costs: Meta's rate card, the billability matrix and the markets, as data. No I/O.

Pricing changes at quarter starts and some of it is only reported, not documented (docs/meta-rules.md:
pricing), so nothing here hard-codes a price or a rule: `estimate` reads three tables parsed from CSV text
(tables.py reads the files the settings name).
"""

import csv
import io
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum

OTHER = "Other"  # Meta's market for every calling code its card does not name


class PricingDataError(ValueError):
    """A rate card, matrix or market table that cannot be used; the message names the file and line."""


class Category(StrEnum):
    """What Meta bills a message as: the template's category, or `service` for free-form messages."""

    MARKETING = "marketing"
    UTILITY = "utility"
    AUTHENTICATION = "authentication"
    AUTHENTICATION_INTERNATIONAL = "authentication_international"
    SERVICE = "service"


def message_category(template_category: str | None) -> Category:
    """MARKETING / UTILITY / AUTHENTICATION (any case) for a template; None for a free-form message."""
    if template_category is None:
        return Category.SERVICE
    try:
        category = Category(template_category.strip().lower())
    except ValueError:
        raise ValueError(f"unknown template category {template_category!r}") from None
    if category is Category.SERVICE:
        raise ValueError("`service` is not a template category: pass None for a free-form message")
    return category


# Meta's `pricing.category` in status webhooks, read as a rate-card column (docs/meta-rules.md: pricing).
REPORTED_CATEGORIES: dict[str, Category | None] = {
    "marketing": Category.MARKETING,
    "marketing_lite": Category.MARKETING,  # Marketing Messages Lite: same list rates (unsure)
    "utility": Category.UTILITY,
    "authentication": Category.AUTHENTICATION,
    "authentication_international": Category.AUTHENTICATION_INTERNATIONAL,
    "service": Category.SERVICE,
    "referral_conversion": None,  # free-entry-point window: free
}


# ---------------------------------------------------------------------------------------------------------
# Markets


@dataclass(frozen=True, slots=True)
class Market:
    """Where a recipient is billed: Meta's market name, from the longest calling code the number starts with."""

    name: str
    calling_code: str | None = None
    country: str | None = None
    iso2: str | None = None  # the recipient's country as the gate resolves it (US vs Canada by area code)
    effective_from: date = date.min


def _in_force(rows: tuple[Market, ...], on: date | None) -> Market:
    """The newest row not after `on` (None: the newest); before the first row the first answers."""
    if on is None:
        return rows[-1]
    return next((m for m in reversed(rows) if m.effective_from <= on), rows[0])


@dataclass(frozen=True, slots=True)
class Markets:
    by_calling_code: dict[str, tuple[Market, ...]]  # each code's rows, oldest first
    by_iso2: dict[str, tuple[Market, ...]]
    longest: int
    former: dict[str, str]  # a market Meta split out of a region → that region

    def lookup(self, recipient: str, on: date | None = None) -> Market:
        """A wa_id or phone number in any spelling, or a BSUID ("US.1349…"), by the rows in force on `on`
        (None: the newest rows); unknown → "Other"."""
        text = recipient.strip()
        bsuid = re.fullmatch(r"([A-Za-z]{2})\.\S+", text)
        if bsuid:
            rows = self.by_iso2.get(bsuid.group(1).upper())
            return _in_force(rows, on) if rows else Market(OTHER)
        digits = re.sub(r"\D", "", text)
        digits = digits[2:] if digits.startswith("00") else digits  # international prefix "00"
        for size in range(min(self.longest, len(digits)), 0, -1):
            found = self.by_calling_code.get(digits[:size])
            if found is not None:
                return _in_force(found, on)
        return Market(OTHER)

    def fallbacks(self, name: str) -> tuple[str, ...]:
        """The regions a market was split out of, nearest first: a rate card from before the split prices
        it at its former region's rate."""
        chain: list[str] = []
        while (name := self.former.get(name, "")) and name not in chain:
            chain.append(name)
        return tuple(chain)


MARKET_COLUMNS = ["calling_code", "iso2", "country", "market", "effective_from"]


def parse_markets(text: str, source: str = "markets.csv") -> Markets:
    """calling_code,iso2,country,market,effective_from rows ('#' lines are comments). A code's newest row
    not after a day applies on that day; an empty effective_from means from the start."""
    by_code: dict[str, list[Market]] = {}
    by_iso2: dict[str, dict[date, Market]] = {}
    for line, row in _rows(text, source, MARKET_COLUMNS):
        code, iso2, country, name, since = (row[k] for k in MARKET_COLUMNS)
        if not code.isdigit() or not re.fullmatch(r"[A-Z]{2}", iso2) or not name:
            raise PricingDataError(f"{source}, line {line}: want digits, a two-letter code and a market")
        try:
            effective = date.fromisoformat(since) if since else date.min
        except ValueError:
            raise PricingDataError(
                f"{source}, line {line}: effective_from {since!r} is not YYYY-MM-DD"
            ) from None
        rows = by_code.setdefault(code, [])
        if any(m.effective_from == effective for m in rows):
            raise PricingDataError(
                f"{source}, line {line}: calling code {code} already has a row from {since or 'the start'}"
            )
        market = Market(name, code, country, iso2, effective)
        rows.append(market)
        by_iso2.setdefault(iso2, {}).setdefault(effective, market)
    if not by_code:
        raise PricingDataError(f"{source}: no markets")
    ordered = {code: tuple(sorted(rows, key=lambda m: m.effective_from)) for code, rows in by_code.items()}
    former: dict[str, str] = {}
    for history in ordered.values():
        for before, after in itertools.pairwise(history):
            if before.name != after.name:
                former.setdefault(after.name, before.name)
    return Markets(
        ordered,
        {iso2: tuple(rows[d] for d in sorted(rows)) for iso2, rows in by_iso2.items()},
        max(len(c) for c in ordered),
        former,
    )


# ---------------------------------------------------------------------------------------------------------
# Billability matrix


class Where(StrEnum):
    """Where a send stands when it leaves: the free entry point beats the window, which beats neither."""

    OUTSIDE_CSW = "outside_csw"
    INSIDE_CSW = "inside_csw"
    INSIDE_FEP = "inside_fep"


def place(*, inside_csw: bool, inside_fep: bool) -> Where:
    return Where.INSIDE_FEP if inside_fep else Where.INSIDE_CSW if inside_csw else Where.OUTSIDE_CSW


@dataclass(frozen=True, slots=True)
class Charge:
    """One matrix cell: paid, free, not_allowed, or paid after `free_per_month` a month per number."""

    kind: str
    free_per_month: int = 0

    @classmethod
    def parse(cls, cell: str) -> "Charge":
        value = cell.strip().lower()
        if value in ("paid", "free", "not_allowed"):
            return cls(value)
        match = re.fullmatch(r"paid_after:(\d+)", value)
        if match:
            return cls("paid_after", int(match.group(1)))
        raise ValueError(f"{cell!r} is not paid, free, not_allowed or paid_after:N")

    def __str__(self) -> str:
        return f"paid after {self.free_per_month} a month" if self.kind == "paid_after" else self.kind


@dataclass(frozen=True, slots=True)
class MatrixRow:
    effective_from: date
    message: Category
    cells: dict[Where, Charge]
    unsure: bool
    note: str


@dataclass(frozen=True, slots=True)
class Matrix:
    """Which messages Meta charges for, by message kind and effective date (newest applicable row wins)."""

    rows: tuple[MatrixRow, ...]

    def row(self, message: Category, on: date) -> MatrixRow:
        kind = Category.AUTHENTICATION if message is Category.AUTHENTICATION_INTERNATIONAL else message
        rows = sorted((r for r in self.rows if r.message is kind), key=lambda r: r.effective_from)
        if not rows:
            raise PricingDataError(f"the billability matrix has no row for {kind.value}")
        # Before the first row (per-message pricing started 2025-07-01) the first row answers.
        return next((r for r in reversed(rows) if r.effective_from <= on), rows[0])


MATRIX_COLUMNS = ["effective_from", "message", *(w.value for w in Where), "confidence", "note"]


def parse_matrix(text: str, source: str = "billability.csv", *, apply_unsure: bool = False) -> Matrix:
    """The billability matrix; rows with confidence `unsure` are kept only when `apply_unsure`."""
    rows: list[MatrixRow] = []
    seen: set[tuple[date, Category]] = set()
    for line, raw in _rows(text, source, MATRIX_COLUMNS):
        try:
            effective = date.fromisoformat(raw["effective_from"])
            message = Category(raw["message"].lower())
            cells = {w: Charge.parse(raw[w.value]) for w in Where}
            confidence = raw["confidence"].lower()
            if confidence not in ("documented", "unsure"):
                raise ValueError(f"confidence {raw['confidence']!r} is not documented or unsure")
        except ValueError as exc:
            raise PricingDataError(f"{source}, line {line}: {exc}") from None
        if message is Category.AUTHENTICATION_INTERNATIONAL:
            raise PricingDataError(
                f"{source}, line {line}: authentication_international follows authentication"
            )
        if (effective, message) in seen:
            raise PricingDataError(f"{source}, line {line}: a second {message.value} row for {effective}")
        seen.add((effective, message))
        if confidence == "unsure" and not apply_unsure:
            continue
        rows.append(MatrixRow(effective, message, cells, confidence == "unsure", raw["note"]))
    missing = {Category.MARKETING, Category.UTILITY, Category.AUTHENTICATION, Category.SERVICE} - {
        r.message for r in rows
    }
    if missing:
        raise PricingDataError(f"{source}: no row for {', '.join(sorted(missing))}")
    return Matrix(tuple(rows))


# ---------------------------------------------------------------------------------------------------------
# Rate card


@dataclass(frozen=True, slots=True)
class Edition:
    """One of Meta's rate-card files: the rates from one effective date on, in one currency."""

    effective_from: date
    currency: str
    source: str
    rates: dict[tuple[str, Category], Decimal | None]  # None: "n/a" in the card


@dataclass(frozen=True, slots=True)
class RateCard:
    """Meta's list rates by market × category × effective date: one or more editions, one currency."""

    currency: str
    editions: tuple[Edition, ...]  # oldest first

    @classmethod
    def of(cls, editions: Sequence[Edition]) -> "RateCard":
        if not editions:
            raise PricingDataError("no rate card")
        ordered = tuple(sorted(editions, key=lambda e: e.effective_from))
        currencies = {e.currency for e in ordered}
        if len(currencies) > 1:
            raise PricingDataError(f"rate cards in several currencies ({', '.join(sorted(currencies))})")
        dates = [e.effective_from for e in ordered]
        if len(set(dates)) != len(dates):
            raise PricingDataError("two rate cards with the same effective date")
        return cls(ordered[0].currency, ordered)

    def edition(self, on: date) -> Edition:
        # Before the oldest edition the oldest answers: estimates need some rate, never a refusal.
        return next((e for e in reversed(self.editions) if e.effective_from <= on), self.editions[0])

    def rate(
        self, market: str, category: Category, on: date, fallbacks: Sequence[str] = ()
    ) -> Decimal | None:
        """The list rate. A market the card does not name pays the first of `fallbacks` it names (the
        region Meta split the market out of, for a card from before the split), else the "Other" row.
        `service` without a rate in the card (no Service column, or n/a) pays the utility rate: that is
        how Meta is reported to bill service messages from 2026-10-01."""
        edition = self.edition(on)
        # Marketing is a required column, so every market row of a card has that key.
        row = next((m for m in (market, *fallbacks) if (m, Category.MARKETING) in edition.rates), OTHER)
        rate = edition.rates.get((row, category))
        if rate is None and category is Category.SERVICE:
            rate = edition.rates.get((row, Category.UTILITY))
        return rate

    @property
    def sources(self) -> list[str]:
        return [e.source for e in self.editions]


CARD_COLUMNS = {
    "market": None,
    "currency": None,
    "marketing": Category.MARKETING,
    "utility": Category.UTILITY,
    "authentication": Category.AUTHENTICATION,
    "authentication_international": Category.AUTHENTICATION_INTERNATIONAL,
    "international": Category.AUTHENTICATION_INTERNATIONAL,
    "service": Category.SERVICE,
}
REQUIRED_CARD_COLUMNS = ("market", "currency", "marketing", "utility", "authentication")
CURRENCY_SIGNS = {"$US": "USD", "US$": "USD", "$": "USD", "€": "EUR", "£": "GBP", "₹": "INR", "R$": "BRL"}
NO_RATE = {"", "n/a", "na", "-", "–", "—"}
MONTH_DATE = re.compile(
    r"effective\s+(?:from\s+|as\s+of\s+|on\s+)?([A-Za-z]+\.?\s+\d{1,2}\s*,?\s*\d{4})", re.I
)
ISO_DATE = re.compile(r"effective\s+(?:from\s+|as\s+of\s+|on\s+)?(\d{4}-\d{2}-\d{2})", re.I)


def parse_rate_card(text: str, source: str, effective_from: date | None = None) -> Edition:
    """One rate-card CSV in the layout Meta publishes: free-text lines (the first naming the effective
    date, "… effective July 1, 2025"), then `Market,Currency,Marketing,Utility,Authentication,
    Authentication-International,Service` and a row per market. `effective_from` overrides the text."""
    reader = csv.reader(io.StringIO(text, newline=""))
    preamble: list[str] = []
    columns: list[Category | str | None] | None = None
    rates: dict[tuple[str, Category], Decimal | None] = {}
    currency: str | None = None
    markets: set[str] = set()
    last = 0
    try:
        for cells in reader:
            # Errors name a record's first line: Meta's header has a quoted cell spanning two lines.
            line, last = last + 1, reader.line_num
            stripped = [c.strip() for c in cells]
            if not any(stripped) or stripped[0].startswith("#"):
                continue
            if columns is None:
                if _column_name(stripped[0]) == "market":
                    columns = _card_columns(stripped, source, line)
                else:
                    preamble.append(",".join(cells))
                continue
            if re.match(r"(note|\*)", stripped[0], re.I):
                continue  # footnotes under the table
            market, row_currency, row_rates = _card_row(stripped, columns, source, line)
            if market in markets:
                raise PricingDataError(f"{source}, line {line}: market {market!r} appears twice")
            if currency is not None and row_currency != currency:
                raise PricingDataError(
                    f"{source}, line {line}: currency {row_currency}, the card is in {currency}"
                )
            currency = row_currency
            markets.add(market)
            rates.update({(market, category): rate for category, rate in row_rates.items()})
    except csv.Error as exc:
        raise PricingDataError(f"{source}, line {reader.line_num}: {exc}") from None
    if columns is None:
        raise PricingDataError(f"{source}: no header row starting with `Market,Currency,…`")
    if currency is None:
        raise PricingDataError(f"{source}: no market rows under the header")
    if OTHER not in markets:
        raise PricingDataError(
            f"{source}: no {OTHER!r} row (the rate of every market the card does not name)"
        )
    effective = effective_from or _effective_date(preamble)
    if effective is None:
        raise PricingDataError(
            f"{source}: no effective date: keep Meta's line '… effective July 1, 2025' above the header, "
            "or name it in WINDOW_GATE_RATE_CARD as PATH@2025-07-01"
        )
    return Edition(effective, currency, source, rates)


def _column_name(cell: str) -> str:
    return re.sub(r"[\s\-]+", "_", cell.strip().lower()).strip("_")


def _card_columns(header: list[str], source: str, line: int) -> list[Category | str | None]:
    names = [_column_name(c) for c in header]
    missing = [c for c in REQUIRED_CARD_COLUMNS if c not in names]
    if missing:
        raise PricingDataError(f"{source}, line {line}: the header lacks {', '.join(missing)}")
    # Columns this parser does not know (a future card's extra column) are read past, not guessed at.
    return [CARD_COLUMNS.get(n) or (n if n in ("market", "currency") else None) for n in names]


def _card_row(
    cells: list[str], columns: list[Category | str | None], source: str, line: int
) -> tuple[str, str, dict[Category, Decimal | None]]:
    if len(cells) < len(columns):
        raise PricingDataError(f"{source}, line {line}: {len(cells)} columns, the header has {len(columns)}")
    market, currency, rates = "", "", {}
    for column, cell in zip(columns, cells, strict=False):
        if column == "market":
            market = cell
        elif column == "currency":
            currency = CURRENCY_SIGNS.get(cell, cell.upper())
        elif isinstance(column, Category):
            rates[column] = _rate(cell, column, source, line)
    if not market:
        raise PricingDataError(f"{source}, line {line}: no market name")
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise PricingDataError(f"{source}, line {line}: currency {currency!r} is not a three-letter code")
    return market, currency, rates


def _rate(cell: str, category: Category, source: str, line: int) -> Decimal | None:
    value = cell.strip().lower()
    if value in NO_RATE:
        return None
    if value == "free":
        return Decimal(0)
    try:
        rate = Decimal(value.lstrip("$€£₹").replace(",", ""))
    except InvalidOperation:
        rate = Decimal("NaN")
    if not rate.is_finite() or rate < 0:
        raise PricingDataError(f"{source}, line {line}: {category.value} rate {cell!r} is not a price")
    return rate


def _effective_date(preamble: list[str]) -> date | None:
    for text in preamble:
        iso = ISO_DATE.search(text)
        if iso:
            return date.fromisoformat(iso.group(1))
        words = MONTH_DATE.search(text)
        if words:
            spelled = re.sub(r"[.,]", " ", words.group(1)).split()
            try:
                return datetime.strptime(" ".join(spelled), "%B %d %Y").date()
            except ValueError:
                return datetime.strptime(" ".join(spelled), "%b %d %Y").date()
    return None


def _rows(text: str, source: str, columns: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a small CSV with a fixed header; '#' lines and blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    try:
        for cells in reader:
            stripped = [c.strip() for c in cells]
            if not any(stripped) or stripped[0].startswith("#"):
                continue
            if header is None:
                header = [c.lower() for c in stripped]
                if header[: len(columns)] != columns:
                    raise PricingDataError(
                        f"{source}, line {reader.line_num}: the header must be {','.join(columns)}"
                    )
                continue
            if len(stripped) < len(columns):
                raise PricingDataError(
                    f"{source}, line {reader.line_num}: {len(stripped)} columns, want {len(columns)}"
                )
            yield reader.line_num, dict(zip(columns, stripped, strict=False))
    except csv.Error as exc:
        raise PricingDataError(f"{source}, line {reader.line_num}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------
# Where Meta does not deliver marketing templates


@dataclass(frozen=True, slots=True)
class Restriction:
    """Meta does not deliver marketing templates to recipients in `country` from `effective_from` to
    `effective_to` (the last day, inclusive; None while it lasts)."""

    effective_from: date
    effective_to: date | None
    country: str
    note: str

    def applies(self, country: str | None, on: date) -> bool:
        in_force = self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)
        return country == self.country and in_force


RESTRICTION_COLUMNS = ["effective_from", "effective_to", "country", "note"]


def parse_restrictions(text: str, source: str = "marketing_restrictions.csv") -> tuple[Restriction, ...]:
    """effective_from,effective_to,country,note rows; country is a two-letter code as markets.csv has it."""
    rows: list[Restriction] = []
    for line, raw in _rows(text, source, RESTRICTION_COLUMNS):
        try:
            since = date.fromisoformat(raw["effective_from"])
            until = date.fromisoformat(raw["effective_to"]) if raw["effective_to"] else None
        except ValueError as exc:
            raise PricingDataError(f"{source}, line {line}: {exc}") from None
        if not re.fullmatch(r"[A-Z]{2}", raw["country"]):
            raise PricingDataError(
                f"{source}, line {line}: country {raw['country']!r} is not a two-letter code"
            )
        if until is not None and until < since:
            raise PricingDataError(f"{source}, line {line}: effective_to is before effective_from")
        rows.append(Restriction(since, until, raw["country"], raw["note"]))
    return tuple(rows)


# ---------------------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True, slots=True)
class Tables:
    """Everything `estimate` reads."""

    card: RateCard
    matrix: Matrix
    markets: Markets
    restrictions: tuple[Restriction, ...] = ()  # empty: marketing_restrictions.csv switched off


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the gate expects Meta to charge for one send, and why."""

    category: Category
    market: str
    where: Where
    allowed: bool  # False: the matrix says Meta does not take this message here (free-form outside a CSW)
    billable: bool
    amount: Decimal  # 0 when free
    currency: str
    rate: Decimal | None  # the card's list rate for (market, category), charged or not
    effective_from: date  # the matrix row that decided
    unsure: bool  # decided by a row marked unsure
    rule: str

    @property
    def inside_csw(self) -> bool:
        return self.where is not Where.OUTSIDE_CSW

    @property
    def inside_fep(self) -> bool:
        return self.where is Where.INSIDE_FEP

    @property
    def pricing_type(self) -> str:
        """In the words of Meta's status webhooks: regular, free_customer_service or free_entry_point."""
        if self.billable:
            return "regular"
        return "free_entry_point" if self.where is Where.INSIDE_FEP else "free_customer_service"

    def as_json(self) -> dict[str, object]:
        return {
            "category": self.category.value,
            "market": self.market,
            "billable": self.billable,
            "amount": str(self.amount),
            "currency": self.currency,
            "rate": None if self.rate is None else str(self.rate),
            "type": self.pricing_type,
            "inside_csw": self.inside_csw,
            "inside_fep": self.inside_fep,
            "unsure": self.unsure,
            "rule": self.rule,
        }


def marketing_restriction(tables: Tables, recipient: str, at: datetime) -> tuple[Market, Restriction] | None:
    """The restriction that stops a marketing template to `recipient` on the day of `at`, with the
    recipient's market (its country), or None when Meta delivers it."""
    on = utc_day(at)
    market = tables.markets.lookup(recipient, on)
    return next(((market, r) for r in tables.restrictions if r.applies(market.iso2, on)), None)


def list_rate(tables: Tables, market: str, category: Category, on: date) -> Decimal | None:
    """The card's rate for a market by name, as of `on` (see `RateCard.rate`)."""
    return tables.card.rate(market, category, on, tables.markets.fallbacks(market))


def utc_day(at: datetime) -> date:
    """The day rates and rules are looked up for (Meta changes them at midnight; UTC here, unsure)."""
    return at.astimezone(UTC).date() if at.tzinfo else at.date()


def estimate(
    tables: Tables,
    *,
    category: str | None,
    recipient: str,
    inside_csw: bool,
    inside_fep: bool,
    at: datetime,
    sent_this_month: int = 0,
) -> Estimate:
    """The cost of one send leaving at `at`. `category` is the template's (MARKETING, UTILITY,
    AUTHENTICATION) or None for free-form; `recipient` a wa_id, phone number or BSUID.
    `sent_this_month`: earlier sends of this category from this number this month, for `paid_after:N`."""
    kind = message_category(category)
    on = utc_day(at)
    market = tables.markets.lookup(recipient, on).name
    row = tables.matrix.row(kind, on)
    where = place(inside_csw=inside_csw, inside_fep=inside_fep)
    charge = row.cells[where]
    billable = charge.kind == "paid" or (
        charge.kind == "paid_after" and sent_this_month >= charge.free_per_month
    )
    rate = list_rate(tables, market, kind, on)
    amount = rate if billable and rate is not None else Decimal(0)
    reason = f"{kind.value} {where.value.replace('_', ' ')}: {charge} (since {row.effective_from}"
    reason += ", unsure)" if row.unsure else ")"
    if billable and rate is None:
        reason += f"; the rate card has no {kind.value} rate for {market}"
    return Estimate(
        category=kind,
        market=market,
        where=where,
        allowed=charge.kind != "not_allowed",
        billable=billable,
        amount=amount,
        currency=tables.card.currency,
        rate=rate,
        effective_from=row.effective_from,
        unsure=row.unsure,
        rule=reason,
    )
