"""How callers may write a customer, and every spelling that names the same WhatsApp account."""

import pytest

from window_gate.customer.identity import QUIRKS, CustomerRef, parse_customer, quirk_variants
from window_gate.errors import InvalidRecipient

BSUID = "US.13491208655302741918"


@pytest.mark.parametrize(
    "written",
    [
        "5511987654321",
        "+5511987654321",
        "+55 11 98765-4321",
        "+55 (11) 98765-4321",
        "0055 11 98765 4321",
        "005511987654321",
        "55-11-98765-4321",
        "55.11.98765.4321",
        "55/11/98765/4321",
        "  +55 11 98765 4321\n",
        "+55\t11\u00a098765-4321",  # tab and no-break space, as pasted from a spreadsheet
    ],
)
def test_phone_number_spellings_normalise_to_digits(written: str) -> None:
    ref = parse_customer(written)
    assert ref == CustomerRef(input=written, wa_id="5511987654321", user_id=None)
    assert ref.key == "5511987654321"
    assert ref.aliases()[0] == "5511987654321"  # the caller's own spelling is looked up first


@pytest.mark.parametrize(
    "written", [BSUID, f" {BSUID} ", "BR.abc_DEF-123", "IN.1", "US.ENT.13491208655302741918"]
)
def test_bsuid_accepted_as_customer(written: str) -> None:
    ref = parse_customer(written)
    assert (ref.input, ref.wa_id, ref.user_id) == (written, None, written.strip())
    assert ref.key == written.strip()
    assert ref.aliases() == [written.strip()]  # no phone-number quirks for a BSUID


@pytest.mark.parametrize("digits", ["1234567", "123456789012345"], ids=["7 digits", "15 digits"])
def test_phone_number_length_limits_accepted(digits: str) -> None:
    assert parse_customer(digits).wa_id == digits


@pytest.mark.parametrize(
    "written",
    [
        "",
        "   ",
        "abc",
        "123",
        "123456",  # 6 digits
        "1234567890123456",  # 16 digits: longer than E.164 allows
        "+55 11 98765-4321 000",  # 16 digits with separators
        "00",
        "+",
        "++5511987654321",
        "55+11987654321",
        "+55 11 98765-432l",  # letter l for digit 1
        "5511９８７６５４３２１",  # full-width digits
        "US.",
        "US.1349 1208",
        "USA.13491208655302741918",
        "us.13491208655302741918",
        "US-13491208655302741918",
        "US.ENT.",  # a parent BSUID needs its id
        "US.ENTX.1349",
        "US.ENT.ENT.1349",
        "+55 11 98765-4321; DROP TABLE customers",
    ],
)
def test_nonsense_refused_as_invalid_recipient(written: str) -> None:
    with pytest.raises(InvalidRecipient) as caught:
        parse_customer(written)
    problem = caught.value.problem()
    assert (problem["code"], problem["status"], problem["customer"]) == ("invalid_recipient", 422, written)


QUIRK_CASES = {
    "BR mobile without the ninth digit": ("5511987654321", "551187654321"),
    "BR mobile with the ninth digit": ("551187654321", "5511987654321"),
    "MX mobile without the 1": ("5215512345678", "525512345678"),
    "MX mobile with the 1": ("525512345678", "5215512345678"),
    "AR mobile without the 9": ("5491123456789", "541123456789"),
}
ONE_WAY = {"AR mobile without the 9"}  # the other way is learnt from Meta


def test_every_national_quirk_has_a_case() -> None:
    assert sorted(QUIRK_CASES) == sorted(q.name for q in QUIRKS)


@pytest.mark.parametrize(("quirk", "written", "variant"), [(k, *v) for k, v in QUIRK_CASES.items()])
def test_national_quirk_spelling_finds_the_other_spelling(quirk: str, written: str, variant: str) -> None:
    assert [q.name for q in QUIRKS if q.pattern.match(written)] == [quirk]
    assert quirk_variants(written) == [variant]
    assert quirk_variants(variant) == ([] if quirk in ONE_WAY else [written])  # and back again
    assert parse_customer("+" + written).aliases() == [written, variant]


def test_argentine_number_without_the_9_is_not_guessed_a_mobile() -> None:
    """54 + 10 digits may be a landline: looking it up as 549 + the same digits could find another
    person's mobile account. Meta's answer to a send teaches that spelling instead."""
    assert parse_customer("+54 11 2345 6789").aliases() == ["541123456789"]


@pytest.mark.parametrize(
    "written",
    [
        "+55 11 3333-4444",  # São Paulo landline (starts with 3)
        "+55 21 2555-1234",  # Rio landline (starts with 2)
        "+55 61 5432-1098",  # starts with 5: not a mobile either
        "+55 11 93333-4444",  # ninth digit before a landline-looking number: no variant
    ],
)
def test_brazilian_landline_gets_no_ninth_digit_variant(written: str) -> None:
    ref = parse_customer(written)
    assert ref.wa_id is not None
    assert quirk_variants(ref.wa_id) == []
    assert ref.aliases() == [ref.wa_id]


@pytest.mark.parametrize(
    "written",
    ["+1 415 555 2671", "+44 7911 123456", "+49 1512 3456789", "+52 55 1234 567", "+54 11 2345 678"],
    ids=["US", "UK", "DE", "MX too short", "AR too short"],
)
def test_numbers_without_national_quirk_have_one_spelling(written: str) -> None:
    ref = parse_customer(written)
    assert ref.wa_id is not None and ref.aliases() == [ref.wa_id]
