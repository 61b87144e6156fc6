"""How a caller may write a customer, and every spelling that may name the same WhatsApp account."""

import re
from dataclasses import dataclass

from window_gate.errors import InvalidRecipient

# BSUIDs look like "US.13491208655302741918": a country code, a dot, an opaque id; a parent BSUID (one id
# across a business portfolio) puts "ENT." before the id. Meta has not published a grammar, so this one
# pattern is the whole rule (unsure, see docs/meta-rules.md: sending).
BSUID = re.compile(r"^[A-Z]{2}\.(?:ENT\.)?[0-9A-Za-z_-]{1,128}$")
SEPARATORS = re.compile(r"[\s().\-/]")
MIN_DIGITS, MAX_DIGITS = 7, 15  # E.164 allows at most 15


@dataclass(frozen=True, slots=True)
class Quirk:
    """One national numbering quirk: Meta's wa_id may differ from the number a person writes."""

    name: str
    pattern: re.Pattern[str]
    replacement: str


QUIRKS: tuple[Quirk, ...] = (
    Quirk("BR mobile without the ninth digit", re.compile(r"^55(\d{2})9([6-9]\d{7})$"), r"55\1\2"),
    Quirk("BR mobile with the ninth digit", re.compile(r"^55(\d{2})([6-9]\d{7})$"), r"55\g<1>9\2"),
    Quirk("MX mobile without the 1", re.compile(r"^521(\d{10})$"), r"52\1"),
    Quirk("MX mobile with the 1", re.compile(r"^52(\d{10})$"), r"521\1"),
    # Argentina one way only: a number written with the 9 is a mobile, and may have been stored without
    # it. Written without the 9 it may be a landline: guessing the 9 could join it to a mobile account, so
    # that spelling is learnt from Meta's answer instead (contacts[].input → wa_id, message/service.py).
    Quirk("AR mobile without the 9", re.compile(r"^549(\d{10})$"), r"54\1"),
)


@dataclass(frozen=True, slots=True)
class CustomerRef:
    """A customer as the caller wrote it, normalised: exactly one of wa_id / user_id is set."""

    input: str
    wa_id: str | None
    user_id: str | None

    @property
    def key(self) -> str:
        return self.wa_id or self.user_id or ""

    def aliases(self) -> list[str]:
        """The spellings to look up, the caller's own first."""
        if self.wa_id is None:
            return [self.key]
        return [self.wa_id, *quirk_variants(self.wa_id)]


def quirk_variants(digits: str) -> list[str]:
    return [q.pattern.sub(q.replacement, digits) for q in QUIRKS if q.pattern.match(digits)]


def parse_customer(raw: str) -> CustomerRef:
    """Accept "+55 11 98765-4321", "0055…", "5511987654321" or a BSUID; refuse anything else."""
    text = raw.strip()
    if BSUID.match(text):
        return CustomerRef(raw, None, text)
    digits = SEPARATORS.sub("", text)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not (digits.isascii() and digits.isdigit()) or not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise InvalidRecipient(
            f"{raw!r} is neither a phone number (7 to 15 digits, '+', spaces and dashes allowed) nor a BSUID",
            customer=raw,
        )
    return CustomerRef(raw, digits, None)
