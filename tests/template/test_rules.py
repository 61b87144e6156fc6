"""The template parameter rule (pure): every way a send's components can miss the template, and the
builder behind POST /v1/templates/{name}/send."""

from typing import Any

import pytest

from window_gate.template.rules import (
    Mismatch,
    Unbuildable,
    build_components,
    check_parameters,
    placeholders,
)

Components = list[dict[str, Any]]


def body(text: str) -> dict[str, Any]:
    return {"type": "BODY", "text": text}


def buttons(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "BUTTONS", "buttons": list(items)}


def sent(kind: str, *parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": kind, "parameters": list(parameters), **extra}


def txt(value: str, name: str | None = None) -> dict[str, Any]:
    return {"type": "text", "text": value} | ({"parameter_name": name} if name else {})


ORDER: Components = [body("Hi {{1}}, your order {{2}} has shipped.")]
NAMED: Components = [
    {"type": "HEADER", "format": "TEXT", "text": "Hello {{first_name}}"},
    body("Hi {{first_name}}, your code is {{code}}."),
]
RECEIPT: Components = [
    {"type": "HEADER", "format": "DOCUMENT"},
    body("Your receipt for order {{1}}."),
    {"type": "FOOTER", "text": "Thanks"},
    buttons(
        {"type": "URL", "text": "Track", "url": "https://shop.example/track/{{1}}"},
        {"type": "QUICK_REPLY", "text": "Stop"},
        {"type": "URL", "text": "Shop", "url": "https://shop.example"},
        {"type": "COPY_CODE", "example": "SAVE10"},
        {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550001111"},
        {"type": "FLOW", "text": "Book"},
    ),
]
DOC = sent("header", {"type": "document", "document": {"link": "https://x.example/r.pdf"}})
TRACK = sent("button", txt("abc"), sub_type="url", index="0")
CODE = sent("button", {"type": "coupon_code", "coupon_code": "SAVE10"}, sub_type="copy_code", index=3)
RECEIPT_OK = [DOC, sent("body", txt("#1")), TRACK, CODE]


def where(mismatches: list[Mismatch]) -> list[tuple[str, str, int | None]]:
    return [(m.component, m.parameter, m.index) for m in mismatches]


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("Hi {{1}}, order {{2}}", "POSITIONAL", ["1", "2"]),
        ("{{2}} then {{1}} and {{2}} again", "POSITIONAL", ["1", "2"]),
        ("spaces {{ 1 }}", "POSITIONAL", ["1"]),
        ("no placeholders", "POSITIONAL", []),
        ("Hi {{first_name}}, {{code}} / {{first_name}}", "NAMED", ["first_name", "code"]),
        ("{{1}} is not a name", "NAMED", []),
        (None, "POSITIONAL", []),
    ],
)
def test_placeholders_in_order(text: str | None, fmt: str, expected: list[str]) -> None:
    assert placeholders(text, fmt) == expected


# --- positional ------------------------------------------------------------------------------------------
def test_positional_parameters_in_order_fit() -> None:
    assert check_parameters(ORDER, "POSITIONAL", [sent("body", txt("Ana"), txt("#1"))]) == []


@pytest.mark.parametrize(
    ("components", "expected", "detail"),
    [
        (
            [sent("body", txt("Ana"))],
            [("body", "{{2}}", None)],
            "body: the template expects 2 parameters ({{1}}, {{2}}); 1 given: {{2}} is missing",
        ),
        (
            [],
            [("body", "{{1}}", None)],
            "body: the template expects 2 parameters ({{1}}, {{2}}); 0 given: {{1}} is missing",
        ),
        (
            [sent("body", txt("Ana"), txt("#1"), txt("extra"))],
            [("body", "{{3}}", None)],
            "body: the template expects 2 parameters ({{1}}, {{2}}); 3 given",
        ),
        (
            [sent("body", txt("Ana"), txt("#1", name="order"))],
            [("body", "{{2}}", None)],
            "body {{2}}: the template is POSITIONAL: send parameters in order, without parameter_name",
        ),
        (
            [sent("body", txt("Ana"), txt("  "))],
            [("body", "{{2}}", None)],
            "body {{2}}: text must be a non-empty string",
        ),
        (
            [sent("body", txt("Ana"), {"type": "image", "image": {"link": "x"}})],
            [("body", "{{2}}", None)],
            "body {{2}}: type must be one of text, currency, date_time, not 'image'",
        ),
        ([{"type": "body", "parameters": [txt("Ana"), "#1"]}], [("body", "{{2}}", None)], None),
        (
            [
                sent(
                    "body",
                    txt("Ana"),
                    {"type": "currency", "currency": {"fallback_value": "$1", "code": "USD"}},
                )
            ],
            [("body", "{{2}}", None)],
            "body {{2}}: currency needs code and an integer amount_1000",
        ),
        (
            [sent("body", txt("Ana"), {"type": "date_time", "date_time": {}})],
            [("body", "{{2}}", None)],
            "body {{2}}: date_time needs an object with fallback_value",
        ),
        (
            [sent("body", txt("Ana"), txt("#1")), sent("body", txt("Ana"), txt("#1"))],
            [("body", "body", None)],
            "body: given twice; send one body component",
        ),
        (
            [{"type": "body", "parameters": "Ana"}],
            [("body", "parameters", None)],
            "body: parameters must be a list",
        ),
    ],
)
def test_positional_refusals_name_the_parameter(
    components: list[Any], expected: list[tuple[str, str, int | None]], detail: str | None
) -> None:
    mismatches = check_parameters(ORDER, "POSITIONAL", components)
    assert where(mismatches) == expected
    if detail is not None:
        assert mismatches[0].detail == detail


def test_currency_and_date_time_parameters_fit() -> None:
    money = {"type": "currency", "currency": {"fallback_value": "$10", "code": "USD", "amount_1000": 10000}}
    when = {"type": "date_time", "date_time": {"fallback_value": "May 1"}}
    assert check_parameters(ORDER, "POSITIONAL", [sent("body", money, when)]) == []


def test_template_without_placeholders_takes_no_parameters() -> None:
    plain = [body("Notice.")]
    assert check_parameters(plain, "POSITIONAL", None) == []
    assert check_parameters(plain, "POSITIONAL", [sent("body")]) == []
    assert where(check_parameters(plain, "POSITIONAL", [sent("body", txt("x"))])) == [("body", "{{1}}", None)]


# --- named -------------------------------------------------------------------------------------------------
def test_named_parameters_fit_in_any_order() -> None:
    given = [
        sent("header", txt("Ana", "first_name")),
        sent("body", txt("123", "code"), txt("Ana", "first_name")),
    ]
    assert check_parameters(NAMED, "NAMED", given) == []


@pytest.mark.parametrize(
    ("body_parameters", "expected", "detail"),
    [
        ([txt("Ana", "first_name")], [("body", "{{code}}", None)], "body: {{code}} is missing"),
        (
            [txt("Ana", "first_name"), txt("1", "code"), txt("x", "surname")],
            [("body", "{{surname}}", None)],
            "body: the template has no {{surname}}; it has {{first_name}}, {{code}}",
        ),
        (
            [txt("Ana", "first_name"), txt("1", "code"), txt("Bo", "first_name")],
            [("body", "{{first_name}}", None)],
            "body {{first_name}}: given twice",
        ),
        (
            [txt("Ana"), txt("1", "code")],
            [("body", "parameters[0]", None), ("body", "{{first_name}}", None)],
            "body: the template is NAMED: each parameter needs its parameter_name ({{first_name}}, {{code}})",
        ),
        (
            [txt("Ana", "first_name"), txt("", "code")],
            [("body", "{{code}}", None)],
            "body {{code}}: text must be a non-empty string",
        ),
    ],
)
def test_named_refusals_name_the_parameter(
    body_parameters: list[dict[str, Any]], expected: list[tuple[str, str, int | None]], detail: str
) -> None:
    given = [sent("header", txt("Ana", "first_name")), sent("body", *body_parameters)]
    mismatches = check_parameters(NAMED, "NAMED", given)
    assert where(mismatches) == expected
    assert mismatches[0].detail == detail


def test_named_text_header_needs_its_parameter() -> None:
    given = [sent("body", txt("Ana", "first_name"), txt("1", "code"))]
    assert where(check_parameters(NAMED, "NAMED", given)) == [("header", "{{first_name}}", None)]


def test_positional_text_header_counts_on_its_own() -> None:
    template = [{"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"}, body("Hi {{1}}")]
    ok = [sent("header", txt("#1")), sent("body", txt("Ana"))]
    assert check_parameters(template, "POSITIONAL", ok) == []
    assert where(check_parameters(template, "POSITIONAL", ok[1:])) == [("header", "{{1}}", None)]


# --- media headers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (DOC, []),
        (sent("header", {"type": "document", "document": {"id": "4490"}}), []),
        (None, [("header", "document", None)]),
        (sent("header"), [("header", "document", None)]),
        (sent("header", {"type": "image", "image": {"link": "x"}}), [("header", "document", None)]),
        (
            sent("header", {"type": "document", "document": {"filename": "r.pdf"}}),
            [("header", "document", None)],
        ),
        (sent("header", txt("x")), [("header", "document", None)]),
        (sent("header", DOC["parameters"][0], DOC["parameters"][0]), [("header", "document", None)]),
    ],
)
def test_media_header_needs_the_matching_parameter_type(
    header: dict[str, Any] | None, expected: list[tuple[str, str, int | None]]
) -> None:
    given = [c for c in (header, sent("body", txt("#1")), TRACK, CODE) if c is not None]
    assert where(check_parameters(RECEIPT, "POSITIONAL", given)) == expected


def test_media_header_refusal_says_what_to_send() -> None:
    [mismatch] = check_parameters(RECEIPT, "POSITIONAL", [sent("body", txt("#1")), TRACK, CODE])
    assert (
        mismatch.detail
        == "header: the template's header is DOCUMENT: send {type: document, document: {link | id}}"
    )
    wrong = sent("header", {"type": "video", "video": {"link": "x"}})
    [mismatch] = check_parameters(RECEIPT, "POSITIONAL", [wrong, sent("body", txt("#1")), TRACK, CODE])
    assert mismatch.detail == "header: the template's header is DOCUMENT: a 'video' parameter was given"


@pytest.mark.parametrize("fmt", ["IMAGE", "VIDEO"])
def test_image_and_video_headers(fmt: str) -> None:
    kind = fmt.lower()
    template = [{"type": "HEADER", "format": fmt}, body("Hi")]
    assert (
        check_parameters(template, "POSITIONAL", [sent("header", {"type": kind, kind: {"link": "x"}})]) == []
    )
    assert where(check_parameters(template, "POSITIONAL", [])) == [("header", kind, None)]


def test_location_header_needs_coordinates() -> None:
    template = [{"type": "HEADER", "format": "LOCATION"}, body("We are here")]
    here = {"type": "location", "location": {"latitude": 52.5, "longitude": 13.4, "name": "Shop"}}
    assert check_parameters(template, "POSITIONAL", [sent("header", here)]) == []
    nowhere = {"type": "location", "location": {"name": "Shop"}}
    assert where(check_parameters(template, "POSITIONAL", [sent("header", nowhere)])) == [
        ("header", "location", None)
    ]


def test_header_parameters_for_a_template_without_header() -> None:
    mismatches = check_parameters(ORDER, "POSITIONAL", [DOC, sent("body", txt("Ana"), txt("#1"))])
    assert where(mismatches) == [("header", "header", None)]
    assert mismatches[0].detail == "the template has no header with parameters"
    assert check_parameters(ORDER, "POSITIONAL", [sent("header"), sent("body", txt("Ana"), txt("#1"))]) == []


# --- buttons ------------------------------------------------------------------------------------------------
def test_receipt_with_required_buttons_fits() -> None:
    assert check_parameters(RECEIPT, "POSITIONAL", RECEIPT_OK) == []


@pytest.mark.parametrize(
    ("button", "expected", "detail"),
    [
        (
            sent("button", txt("abc"), sub_type="quick_reply", index=0),
            [("button", "sub_type", 0)],
            "button 0 is URL: sub_type must be 'url', not 'quick_reply'",
        ),
        (
            sent("button", txt("x"), sub_type="url", index=6),
            [("button", "index", 6)],
            "button 6: the template has 6 buttons (index 0..5)",
        ),
        (
            sent("button", sub_type="url", index="x"),
            [("button", "index", None)],
            "button: index must be a number 0..9",
        ),
        (sent("button", sub_type="url", index=True), [("button", "index", None)], None),
        (sent("button", sub_type="url", index=10), [("button", "index", None)], None),
        (
            sent("button", {"type": "payload", "payload": "STOP"}, sub_type="quick_reply", index=1),
            [],
            None,
        ),
        (sent("button", sub_type="quick_reply", index=1), [], None),
        (
            sent("button", txt("STOP"), sub_type="quick_reply", index=1),
            [("button", "payload", 1)],
            "button 1: send {type: payload, payload: <the payload>}",
        ),
        (
            sent("button", txt("x"), sub_type="url", index=2),
            [("button", "{{1}}", 2)],
            "button 2: the URL is static: it takes no parameter",
        ),
        (sent("button", sub_type="url", index=2), [], None),
        (
            sent("button", sub_type="voice_call", index=4),
            [("button", "index", 4)],
            "button 4 (PHONE_NUMBER) takes no parameters",
        ),
        (sent("button", {"type": "action", "action": {}}, sub_type="flow", index=5), [], None),
        (sent("button", sub_type="URL", index="1"), [("button", "sub_type", 1)], None),
    ],
)
def test_button_index_and_sub_type_must_match(
    button: dict[str, Any], expected: list[tuple[str, str, int | None]], detail: str | None
) -> None:
    same_index = [c for c in RECEIPT_OK if c["type"] == "button" and str(c["index"]) == str(button["index"])]
    given = [c for c in RECEIPT_OK if c not in same_index]
    mismatches = check_parameters(RECEIPT, "POSITIONAL", [*given, button])
    assert where(mismatches) == expected
    if detail is not None:
        assert mismatches[0].detail == detail


def test_button_given_twice() -> None:
    mismatches = check_parameters(RECEIPT, "POSITIONAL", [*RECEIPT_OK, TRACK])
    assert where(mismatches) == [("button", "index", 0)]


@pytest.mark.parametrize(
    ("leave_out", "expected", "detail"),
    [
        (
            TRACK,
            [("button", "{{1}}", 0)],
            "button 0 (URL) needs its {{1}}: send {type: button, sub_type: url, index: 0, parameters: [...]}",
        ),
        (
            CODE,
            [("button", "coupon_code", 3)],
            "button 3 (COPY_CODE) needs its coupon_code: send {type: button, sub_type: copy_code, index: 3, "
            "parameters: [...]}",
        ),
    ],
)
def test_dynamic_url_and_copy_code_buttons_are_required(
    leave_out: dict[str, Any], expected: list[tuple[str, str, int | None]], detail: str
) -> None:
    mismatches = check_parameters(RECEIPT, "POSITIONAL", [c for c in RECEIPT_OK if c is not leave_out])
    assert where(mismatches) == expected
    assert mismatches[0].detail == detail


@pytest.mark.parametrize(
    "parameters",
    [[], [txt("a"), txt("b")], [{"type": "text", "text": ""}], [{"type": "payload", "payload": "a"}]],
)
def test_dynamic_url_button_takes_exactly_one_text(parameters: list[dict[str, Any]]) -> None:
    button = sent("button", *parameters, sub_type="url", index=0)
    rest = [c for c in RECEIPT_OK if c is not TRACK]
    assert where(check_parameters(RECEIPT, "POSITIONAL", [*rest, button])) == [("button", "{{1}}", 0)]


def test_authentication_otp_button_is_sent_as_url_with_the_code() -> None:
    template = [
        body("{{1}} is your verification code."),
        buttons({"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}),
    ]
    code = sent("button", txt("123456"), sub_type="url", index="0")
    assert check_parameters(template, "POSITIONAL", [sent("body", txt("123456")), code]) == []
    assert where(check_parameters(template, "POSITIONAL", [sent("body", txt("123456"))])) == [
        ("button", "{{1}}", 0)
    ]


def test_buttons_for_a_template_without_buttons() -> None:
    [mismatch] = check_parameters(ORDER, "POSITIONAL", [sent("body", txt("a"), txt("b")), TRACK])
    assert (mismatch.component, mismatch.parameter, mismatch.index) == ("button", "index", 0)
    assert mismatch.detail == "button 0: the template has no buttons"


# --- the components list itself ------------------------------------------------------------------------------
def test_components_must_be_a_list_of_objects() -> None:
    assert where(check_parameters(ORDER, "POSITIONAL", {"type": "body"})) == [
        ("components", "components", None)
    ]
    mismatches = check_parameters(ORDER, "POSITIONAL", ["body", sent("body", txt("a"), txt("b"))])
    assert where(mismatches) == [("components", "[0]", None)]


def test_component_the_template_does_not_have() -> None:
    mismatches = check_parameters(ORDER, "POSITIONAL", [sent("body", txt("a"), txt("b")), sent("footer")])
    assert where(mismatches) == [("footer", "type", None)]
    assert mismatches[0].detail == "the template has no footer component"


def test_components_the_gate_does_not_model_are_left_to_meta() -> None:
    carousel = [body("Pick one"), {"type": "CAROUSEL", "cards": []}]
    assert (
        check_parameters(carousel, "POSITIONAL", [{"type": "carousel", "cards": [{"card_index": 0}]}]) == []
    )


def test_mismatch_public_form() -> None:
    assert Mismatch("button", "sub_type", "d", 2).public() == {
        "component": "button",
        "parameter": "sub_type",
        "index": 2,
        "detail": "d",
    }
    assert Mismatch("body", "{{1}}", "d").public() == {
        "component": "body",
        "parameter": "{{1}}",
        "detail": "d",
    }


# --- building components from values -----------------------------------------------------------------------
def test_build_positional_fills_header_then_body() -> None:
    template = [{"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"}, *ORDER]
    built = build_components(template, "POSITIONAL", ["#1", "Ana", "#1"])
    assert built == [sent("header", txt("#1")), sent("body", txt("Ana"), txt("#1"))]
    assert check_parameters(template, "POSITIONAL", built) == []


def test_build_named_places_each_name_where_it_appears() -> None:
    built = build_components(NAMED, "NAMED", {"code": "123", "first_name": "Ana"})
    assert built == [
        sent("header", txt("Ana", "first_name")),
        sent("body", txt("Ana", "first_name"), txt("123", "code")),
    ]
    assert check_parameters(NAMED, "NAMED", built) == []


def test_build_media_header_and_buttons() -> None:
    built = build_components(
        RECEIPT, "POSITIONAL", ["#1"], {"link": "https://x.example/r.pdf"}, {0: "abc", 3: "SAVE10", 1: "STOP"}
    )
    assert built == [
        DOC,
        sent("body", txt("#1")),
        sent("button", txt("abc"), sub_type="url", index="0"),
        sent("button", {"type": "payload", "payload": "STOP"}, sub_type="quick_reply", index="1"),
        sent("button", {"type": "coupon_code", "coupon_code": "SAVE10"}, sub_type="copy_code", index="3"),
    ]
    assert check_parameters(RECEIPT, "POSITIONAL", built) == []


def test_build_keeps_a_complete_header_parameter() -> None:
    header = {"type": "document", "document": {"id": "4490", "filename": "r.pdf"}}
    assert build_components(RECEIPT, "POSITIONAL", ["#1"], header)[0] == sent("header", header)


def test_build_leaves_counting_to_the_check() -> None:
    built = build_components(ORDER, "POSITIONAL", ["Ana"])
    assert where(check_parameters(ORDER, "POSITIONAL", built)) == [("body", "{{2}}", None)]


@pytest.mark.parametrize(
    ("components", "fmt", "parameters", "header", "button_values", "expected"),
    [
        (ORDER, "POSITIONAL", {"1": "Ana"}, None, None, ("body", "parameters", None)),
        (NAMED, "NAMED", ["Ana"], None, None, ("body", "parameters", None)),
        (NAMED, "NAMED", {"first_name": "Ana", "surname": "B"}, None, None, ("body", "{{surname}}", None)),
        (NAMED, "NAMED", {}, {"link": "x"}, None, ("header", "header", None)),
        (ORDER, "POSITIONAL", [], None, {0: "x"}, ("button", "index", 0)),
        (RECEIPT, "POSITIONAL", [], None, {4: "x"}, ("button", "index", 4)),
        (None, None, [], None, {0: "x"}, ("button", "index", 0)),
        (None, None, [], {"link": "x"}, None, ("header", "type", None)),
    ],
)
def test_build_refuses_what_cannot_be_placed(
    components: Components | None,
    fmt: str | None,
    parameters: list[str] | dict[str, str],
    header: dict[str, Any] | None,
    button_values: dict[int, str] | None,
    expected: tuple[str, str, int | None],
) -> None:
    with pytest.raises(Unbuildable) as caught:
        build_components(components, fmt, parameters, header, button_values)
    m = caught.value.mismatch
    assert (m.component, m.parameter, m.index) == expected


def test_build_without_known_components_puts_values_in_the_body() -> None:
    assert build_components(None, None, ["Ana", "#1"]) == [sent("body", txt("Ana"), txt("#1"))]
    assert build_components(None, None, {"first_name": "Ana"}) == [sent("body", txt("Ana", "first_name"))]
    image = {"type": "image", "image": {"link": "x"}}
    assert build_components(None, None, [], image) == [sent("header", image)]
    assert build_components(None, None, []) == []


# --- Meta's limits on text parameters (docs/meta-rules.md: limits) ---------------------------------
@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("Ana\nSilva", "a newline"),
        ("Ana\r\nSilva", "a newline"),
        ("Ana\tSilva", "a tab"),
        ("Ana     Silva", "more than 4 consecutive spaces"),
    ],
)
def test_text_parameter_meta_refuses_is_named(value: str, why: str) -> None:
    [mismatch] = check_parameters(ORDER, "POSITIONAL", [sent("body", txt("#1"), txt(value))])
    assert (mismatch.component, mismatch.parameter) == ("body", "{{2}}")
    assert mismatch.detail == f"body {{{{2}}}}: Meta refuses {why} in a text parameter"


def test_four_spaces_and_other_whitespace_pass() -> None:
    assert check_parameters(ORDER, "POSITIONAL", [sent("body", txt("Ana    Silva"), txt("#1 "))]) == []


def test_header_text_parameter_over_60_characters_is_refused() -> None:
    header = sent("header", txt("x" * 61, "first_name"))
    [mismatch] = check_parameters(
        NAMED, "NAMED", [header, sent("body", txt("Ana", "first_name"), txt("1", "code"))]
    )
    assert (mismatch.component, mismatch.parameter) == ("header", "{{first_name}}")
    assert mismatch.detail == "header {{first_name}}: 61 characters; Meta allows 60 in a header parameter"
    header = sent("header", txt("x" * 60, "first_name"))
    assert (
        check_parameters(NAMED, "NAMED", [header, sent("body", txt("Ana", "first_name"), txt("1", "code"))])
        == []
    )


def test_body_over_1024_characters_once_filled_in_names_the_longest_parameter() -> None:
    fixed = len("Hi , your order  has shipped.")
    fits = [sent("body", txt("A" * 24), txt("B" * (1024 - fixed - 24)))]
    assert check_parameters(ORDER, "POSITIONAL", fits) == []
    [mismatch] = check_parameters(
        ORDER, "POSITIONAL", [sent("body", txt("A" * 25), txt("B" * (1024 - fixed - 24)))]
    )
    assert (mismatch.component, mismatch.parameter) == ("body", "{{2}}")
    assert mismatch.detail == (
        f"body: 1025 characters once its parameters are filled in; Meta allows 1024 (the longest parameter, "
        f"{{{{2}}}}, has {1024 - fixed - 24})"
    )


def test_named_body_and_fallback_values_count_once_filled_in() -> None:
    header = sent("header", txt("Ana", "first_name"))
    date = {"type": "date_time", "parameter_name": "code", "date_time": {"fallback_value": "x" * 1100}}
    [mismatch] = check_parameters(NAMED, "NAMED", [header, sent("body", txt("Ana", "first_name"), date)])
    assert (mismatch.component, mismatch.parameter) == ("body", "{{code}}")
