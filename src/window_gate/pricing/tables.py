"""The pricing tables the settings name, read once per process (the only file I/O of pricing)."""

import functools
import logging
from datetime import date
from importlib import resources
from pathlib import Path

from window_gate.config import Settings, SettingsError
from window_gate.pricing.rules import (
    Matrix,
    PricingDataError,
    RateCard,
    Tables,
    parse_markets,
    parse_matrix,
    parse_rate_card,
    parse_restrictions,
)

log = logging.getLogger(__name__)
EXAMPLE_RATE_CARD = "rate_card_EXAMPLE_USD.csv"
MATRIX = "billability.csv"
MARKETS = "markets.csv"
RESTRICTIONS = "marketing_restrictions.csv"


def bundled(name: str) -> str:
    return resources.files("window_gate.pricing").joinpath("data", name).read_text(encoding="utf-8")


def split_card_setting(value: str | None) -> tuple[tuple[str, date | None], ...]:
    """WINDOW_GATE_RATE_CARD: comma-separated `PATH` or `PATH@YYYY-MM-DD`; empty → the bundled EXAMPLE."""
    out: list[tuple[str, date | None]] = []
    for item in (value or "").split(","):
        path, _, when = item.strip().rpartition("@") if "@" in item else (item.strip(), "", "")
        if not path:
            continue
        try:
            out.append((path, date.fromisoformat(when) if when else None))
        except ValueError:
            raise PricingDataError(f"{item.strip()!r}: the date after @ must be YYYY-MM-DD") from None
    return tuple(out)


@functools.cache
def load_card(setting: str | None) -> RateCard:
    """WINDOW_GATE_RATE_CARD's files, or the bundled EXAMPLE card when it is empty."""
    editions = [
        parse_rate_card(_read(path), path, effective) for path, effective in split_card_setting(setting)
    ]
    if not editions:
        editions = [parse_rate_card(bundled(EXAMPLE_RATE_CARD), EXAMPLE_RATE_CARD)]
    return RateCard.of(editions)


@functools.cache
def load_matrix(path: str | None, apply_unsure: bool) -> Matrix:
    """WINDOW_GATE_BILLABILITY_MATRIX, or the bundled matrix when it is empty."""
    text, source = (_read(path), path) if path else (bundled(MATRIX), MATRIX)
    return parse_matrix(text, source, apply_unsure=apply_unsure)


@functools.cache
def load_tables(
    rate_card: str | None, matrix: str | None, apply_unsure: bool, restrictions: bool = True
) -> Tables:
    """Everything `estimate` reads, as the settings name it (files are read once per process);
    `restrictions` False leaves the marketing restrictions out. Raises PricingDataError naming the file
    and line of the first problem."""
    if not rate_card:
        log.warning("no WINDOW_GATE_RATE_CARD: cost estimates use the bundled EXAMPLE rates, not Meta's")
    return Tables(
        card=load_card(rate_card),
        matrix=load_matrix(matrix, apply_unsure),
        markets=parse_markets(bundled(MARKETS), MARKETS),
        restrictions=parse_restrictions(bundled(RESTRICTIONS), RESTRICTIONS) if restrictions else (),
    )


def configured(settings: Settings) -> Tables:
    """The tables the settings name. A bad file is a SettingsError of one line naming the setting, the
    file and the line, so it stops start-up (the lifespan, the CLI) as a bad setting does."""
    for name, read in (
        ("rate_card", lambda: load_card(settings.rate_card)),
        (
            "billability_matrix",
            lambda: load_matrix(settings.billability_matrix, settings.pricing_apply_unsure),
        ),
    ):
        try:
            read()
        except PricingDataError as exc:
            raise SettingsError(f"WINDOW_GATE_{name.upper()}: {exc}") from None
    return load_tables(
        settings.rate_card,
        settings.billability_matrix,
        settings.pricing_apply_unsure,
        settings.marketing_restrictions,
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # Meta's downloads may start with a BOM
    except OSError as exc:
        raise PricingDataError(f"{path}: {exc.strerror or exc}") from None
