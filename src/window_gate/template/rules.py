"""A template send's parameters against the template's components. Pure: no I/O.

Meta checks the same when the message arrives (132000 count, 132012 format, 131008 missing value), but
answers with a code and little else; checked here, the caller learns which component and which parameter
is wrong before anything leaves (docs/meta-rules.md: templates).

Templates come in Meta's `message_templates` shape (components HEADER / BODY / FOOTER / BUTTONS with
`format`, `text`, `buttons`); sends in the Cloud API's (`components: [{type: header|body|button, ...}]`).
Components the gate does not model (CAROUSEL, LIMITED_TIME_OFFER, ...) are left for Meta to judge.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

POSITIONAL, NAMED = "POSITIONAL", "NAMED"
POSITIONAL_PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")
NAMED_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
MEDIA_HEADERS = {"IMAGE": "image", "VIDEO": "video", "DOCUMENT": "document", "LOCATION": "location"}
TEXT_PARAMETER_TYPES = ("text", "currency", "date_time")
# The `sub_type` a send gives for each kind of template button. Authentication templates' OTP buttons
# (copy code, one tap) are sent as `url` buttons carrying the code.
BUTTON_SUB_TYPES = {
    "QUICK_REPLY": "quick_reply",
    "URL": "url",
    "OTP": "url",
    "COPY_CODE": "copy_code",
    "FLOW": "flow",
    "CATALOG": "catalog",
    "MPM": "mpm",
}
NO_PARAMETER_BUTTONS = frozenset({"PHONE_NUMBER", "VOICE_CALL"})
MAX_BUTTON_INDEX = 9
# What Meta refuses in a text parameter (docs/meta-rules.md: limits: reported as 132018, 132000 or 100) and
# how long a text may be (132005 for a body too long once filled in). One row each: a changed limit is a
# one-line change.
FORBIDDEN_IN_TEXT: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[\r\n]"), "a newline"),
    (re.compile(r"\t"), "a tab"),
    (re.compile(r" {5}"), "more than 4 consecutive spaces"),
)
MAX_PARAMETER_CHARACTERS = {"header": 60}  # one text parameter of that component
MAX_FILLED_CHARACTERS = {"body": 1024}  # that component's text once its parameters are filled in


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One way the parameters miss the template: which component, which parameter, and why."""

    component: str  # header | body | button | components
    parameter: str  # "{{2}}", "{{first_name}}", "image", "index", "sub_type", "coupon_code", ...
    detail: str
    index: int | None = None  # the button's index, for component `button`

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"component": self.component, "parameter": self.parameter}
        if self.index is not None:
            out["index"] = self.index
        return out | {"detail": self.detail}


def placeholders(text: object, parameter_format: str = POSITIONAL) -> list[str]:
    """The distinct placeholders of a text in order: "1", "2" (positional) or "first_name" (named).
    Positional ones are numbered, so they sort by number whatever order the text uses them in."""
    if not isinstance(text, str):
        return []
    if parameter_format.upper() == NAMED:
        return list(dict.fromkeys(NAMED_PLACEHOLDER.findall(text)))
    return [str(n) for n in sorted({int(n) for n in POSITIONAL_PLACEHOLDER.findall(text)})]


def label(placeholder: str) -> str:
    return "{{" + placeholder + "}}"


def check_parameters(
    components: Sequence[Mapping[str, Any]], parameter_format: str, sent: object
) -> list[Mismatch]:
    """Every mismatch between a send's `template.components` and the template; empty when they fit."""
    named = (parameter_format or POSITIONAL).upper() == NAMED
    template = _by_type(components)
    if sent is None:
        sent = []
    if not isinstance(sent, list):
        return [Mismatch("components", "components", "template.components must be a list")]
    given: dict[str, Mapping[str, Any]] = {}
    buttons: dict[int, Mapping[str, Any]] = {}
    out: list[Mismatch] = []
    for position, part in enumerate(sent):
        if not isinstance(part, Mapping):
            out.append(Mismatch("components", f"[{position}]", f"components[{position}] must be an object"))
            continue
        kind = str(part.get("type") or "").lower()
        if kind in ("header", "body"):
            if kind in given:
                out.append(Mismatch(kind, kind, f"{kind}: given twice; send one {kind} component"))
            given[kind] = part
        elif kind == "button":
            index = _index(part.get("index"))
            if index is None:
                out.append(
                    Mismatch("button", "index", f"button: index must be a number 0..{MAX_BUTTON_INDEX}")
                )
            elif index in buttons:
                out.append(Mismatch("button", "index", f"button {index}: given twice", index))
            else:
                buttons[index] = part
        elif kind.upper() not in template:
            out.append(
                Mismatch(kind or "components", "type", f"the template has no {kind or 'untyped'} component")
            )
    out += _header(template.get("HEADER"), given.get("header"), named)
    body = template.get("BODY")
    out += _text("body", body.get("text") if body else None, given.get("body"), named)
    out += _buttons(template.get("BUTTONS"), buttons)
    return out


def _header(
    template: Mapping[str, Any] | None, given: Mapping[str, Any] | None, named: bool
) -> list[Mismatch]:
    fmt = str((template or {}).get("format") or "TEXT").upper()
    kind = MEDIA_HEADERS.get(fmt)
    if template is None or kind is None:
        return _text("header", template.get("text") if template else None, given, named)
    parameters = _parameters(given)
    wanted = f"{{type: {kind}, {kind}: {{{'latitude, longitude' if kind == 'location' else 'link | id'}}}}}"
    if parameters is None:
        return [Mismatch("header", "parameters", "header: parameters must be a list")]
    if not parameters:
        return [Mismatch("header", kind, f"header: the template's header is {fmt}: send {wanted}")]
    if len(parameters) > 1:
        return [
            Mismatch("header", kind, f"header: the {fmt} header takes one parameter; {len(parameters)} given")
        ]
    parameter = parameters[0]
    got = parameter.get("type") if isinstance(parameter, Mapping) else None
    if got != kind or not isinstance(parameter, Mapping):
        return [
            Mismatch("header", kind, f"header: the template's header is {fmt}: a {got!r} parameter was given")
        ]
    media = parameter.get(kind)
    if kind == "location":
        ok = (
            isinstance(media, Mapping)
            and media.get("latitude") is not None
            and media.get("longitude") is not None
        )
    else:
        ok = isinstance(media, Mapping) and bool(media.get("link") or media.get("id"))
    return [] if ok else [Mismatch("header", kind, f"header: send {wanted}")]


def _text(component: str, text: object, given: Mapping[str, Any] | None, named: bool) -> list[Mismatch]:
    expected = placeholders(text, NAMED if named else POSITIONAL)
    parameters = _parameters(given)
    if parameters is None:
        return [Mismatch(component, "parameters", f"{component}: parameters must be a list")]
    if text is None and parameters:
        return [Mismatch(component, component, f"the template has no {component} with parameters")]
    out = (_named if named else _positional)(component, expected, parameters)
    limit = MAX_FILLED_CHARACTERS.get(component)
    if out or limit is None or not isinstance(text, str):
        return out
    values = _values(expected, parameters, named)
    filled = (NAMED_PLACEHOLDER if named else POSITIONAL_PLACEHOLDER).sub(
        lambda m: values.get(m.group(1) if named else str(int(m.group(1))), m.group(0)), text
    )
    if len(filled) <= limit:
        return []
    longest = max(values, key=lambda name: len(values[name]), default=None)
    which = f" (the longest parameter, {label(longest)}, has {len(values[longest])})" if longest else ""
    return [
        Mismatch(
            component,
            label(longest) if longest else component,
            f"{component}: {len(filled)} characters once its parameters are filled in; Meta allows "
            f"{limit}{which}",
        )
    ]


def _values(expected: list[str], parameters: list[Any], named: bool) -> dict[str, str]:
    """Each placeholder's text as Meta fills it in (a currency's or date's fallback_value)."""
    out: dict[str, str] = {}
    for position, parameter in enumerate(parameters):
        if not isinstance(parameter, Mapping):
            continue
        name = parameter.get("parameter_name") if named else expected[position]
        kind = parameter.get("type")
        value = parameter.get(kind) if isinstance(kind, str) else None
        if isinstance(value, Mapping):
            value = value.get("fallback_value")
        if isinstance(name, str) and isinstance(value, str):
            out[name] = value
    return out


def _positional(component: str, expected: list[str], parameters: list[Any]) -> list[Mismatch]:
    expects = f"{_plural(len(expected))} ({_labels(expected)})" if expected else "no parameters"
    count = f"{component}: the template expects {expects}; {len(parameters)} given"
    if len(parameters) < len(expected):
        return [
            Mismatch(
                component,
                label(expected[len(parameters)]),
                f"{count}: {label(expected[len(parameters)])} is missing",
            )
        ]
    if len(parameters) > len(expected):
        return [Mismatch(component, label(str(len(expected) + 1)), count)]
    out = []
    for placeholder, parameter in zip(expected, parameters, strict=True):
        where = label(placeholder)
        if isinstance(parameter, Mapping) and parameter.get("parameter_name") is not None:
            out.append(
                Mismatch(
                    component,
                    where,
                    f"{component} {where}: the template is POSITIONAL: send parameters in order, without "
                    "parameter_name",
                )
            )
        elif (problem := _value(parameter, component)) is not None:
            out.append(Mismatch(component, where, f"{component} {where}: {problem}"))
    return out


def _named(component: str, expected: list[str], parameters: list[Any]) -> list[Mismatch]:
    out, seen = [], set()
    for position, parameter in enumerate(parameters):
        name = parameter.get("parameter_name") if isinstance(parameter, Mapping) else None
        if not isinstance(name, str) or not name:
            out.append(
                Mismatch(
                    component,
                    f"parameters[{position}]",
                    f"{component}: the template is NAMED: each parameter needs its parameter_name "
                    f"({_labels(expected) or 'none expected'})",
                )
            )
        elif name not in expected:
            out.append(
                Mismatch(
                    component,
                    label(name),
                    f"{component}: the template has no {label(name)}; it has {_labels(expected) or 'none'}",
                )
            )
        elif name in seen:
            out.append(Mismatch(component, label(name), f"{component} {label(name)}: given twice"))
        else:
            seen.add(name)
            if (problem := _value(parameter, component)) is not None:
                out.append(Mismatch(component, label(name), f"{component} {label(name)}: {problem}"))
    out += [
        Mismatch(component, label(name), f"{component}: {label(name)} is missing")
        for name in expected
        if name not in seen
    ]
    return out


def _value(parameter: object, component: str) -> str | None:
    """What is wrong with one text-like parameter's value, or None."""
    if not isinstance(parameter, Mapping):
        return "each parameter must be an object such as {type: text, text: ...}"
    kind = parameter.get("type")
    value = parameter.get(kind) if isinstance(kind, str) else None
    if kind not in TEXT_PARAMETER_TYPES:
        return f"type must be one of {', '.join(TEXT_PARAMETER_TYPES)}, not {kind!r}"
    if kind == "text":
        if not (isinstance(value, str) and value.strip()):
            return "text must be a non-empty string"
        for pattern, what in FORBIDDEN_IN_TEXT:
            if pattern.search(value):
                return f"Meta refuses {what} in a text parameter"
        limit = MAX_PARAMETER_CHARACTERS.get(component)
        if limit is not None and len(value) > limit:
            return f"{len(value)} characters; Meta allows {limit} in a {component} parameter"
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("fallback_value"), str):
        return f"{kind} needs an object with fallback_value"
    if kind == "currency" and not (isinstance(value.get("code"), str) and _integer(value.get("amount_1000"))):
        return "currency needs code and an integer amount_1000"
    return None


def _buttons(template: Mapping[str, Any] | None, given: Mapping[int, Mapping[str, Any]]) -> list[Mismatch]:
    buttons = [b for b in ((template or {}).get("buttons") or []) if isinstance(b, Mapping)]
    out = []
    for index, part in sorted(given.items()):
        if index >= len(buttons):
            out.append(
                Mismatch(
                    "button",
                    "index",
                    f"button {index}: the template has {_plural(len(buttons), 'button')} "
                    f"(index 0..{len(buttons) - 1})"
                    if buttons
                    else f"button {index}: the template has no buttons",
                    index,
                )
            )
            continue
        out += _button(index, buttons[index], part)
    for index, button in enumerate(buttons):
        need = _required(button)
        if need is not None and index not in given:
            sub_type, parameter = need
            out.append(
                Mismatch(
                    "button",
                    parameter,
                    f"button {index} ({button.get('type')}) needs its {parameter}: send "
                    f"{{type: button, sub_type: {sub_type}, index: {index}, parameters: [...]}}",
                    index,
                )
            )
    return out


def _button(index: int, button: Mapping[str, Any], part: Mapping[str, Any]) -> list[Mismatch]:
    kind = str(button.get("type") or "").upper()
    sub_type = str(part.get("sub_type") or "").lower()
    want = BUTTON_SUB_TYPES.get(kind)
    parameters = _parameters(part)
    if kind in NO_PARAMETER_BUTTONS:
        return [Mismatch("button", "index", f"button {index} ({kind}) takes no parameters", index)]
    if want is None:
        return []  # a button kind the gate does not model: Meta judges
    if sub_type != want:
        return [
            Mismatch(
                "button",
                "sub_type",
                f"button {index} is {kind}: sub_type must be {want!r}, not {sub_type!r}",
                index,
            )
        ]
    if parameters is None:
        return [Mismatch("button", "parameters", f"button {index}: parameters must be a list", index)]
    if want == "url":
        dynamic = kind == "OTP" or bool(placeholders(button.get("url")))
        if not dynamic:
            return (
                [
                    Mismatch(
                        "button", "{{1}}", f"button {index}: the URL is static: it takes no parameter", index
                    )
                ]
                if parameters
                else []
            )
        return _one(index, parameters, "text", "{{1}}", "the URL suffix (or the code)")
    if want == "copy_code":
        return _one(index, parameters, "coupon_code", "coupon_code", "the code to copy")
    if want == "quick_reply":
        return _one(index, parameters, "payload", "payload", "the payload") if parameters else []
    return []  # flow, catalog, mpm: their action objects are Meta's to judge


def _one(index: int, parameters: list[Any], kind: str, name: str, what: str) -> list[Mismatch]:
    if len(parameters) != 1:
        return [
            Mismatch(
                "button", name, f"button {index}: one parameter ({what}); {len(parameters)} given", index
            )
        ]
    parameter = parameters[0]
    value = parameter.get(kind) if isinstance(parameter, Mapping) and parameter.get("type") == kind else None
    if not (isinstance(value, str) and value):
        return [Mismatch("button", name, f"button {index}: send {{type: {kind}, {kind}: <{what}>}}", index)]
    return []


def _required(button: Mapping[str, Any]) -> tuple[str, str] | None:
    """(sub_type, parameter) a button must be sent with, or None when it may be left out."""
    kind = str(button.get("type") or "").upper()
    if kind == "OTP" or (kind == "URL" and placeholders(button.get("url"))):
        return "url", "{{1}}"
    if kind == "COPY_CODE":
        return "copy_code", "coupon_code"
    return None


# --- building components for POST /v1/templates/{name}/send -----------------------------------------------
class Unbuildable(ValueError):
    """The convenience parameters cannot be placed in this template's components."""

    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(mismatch.detail)
        self.mismatch = mismatch


def build_components(
    components: Sequence[Mapping[str, Any]] | None,
    parameter_format: str | None,
    parameters: Sequence[str] | Mapping[str, str],
    header: Mapping[str, Any] | None = None,
    buttons: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Cloud API `template.components` from values: positional ones in reading order (the header's
    placeholders, then the body's), named ones by name; the header's media object; button values by index.
    With no components known (a registry never synced), the values all go to the body."""
    template = _by_type(components or [])
    fmt = (parameter_format or (NAMED if isinstance(parameters, Mapping) else POSITIONAL)).upper()
    if isinstance(parameters, Mapping) != (fmt == NAMED):
        want = "an object of values by name" if fmt == NAMED else "a list of values in order"
        raise Unbuildable(
            Mismatch("body", "parameters", f"the template is {fmt}: send `parameters` as {want}")
        )
    head = template.get("HEADER")
    head_kind = MEDIA_HEADERS.get(str((head or {}).get("format") or "TEXT").upper())
    head_names = placeholders(head.get("text"), fmt) if head and head_kind is None else []
    body = template.get("BODY")
    body_names = placeholders(body.get("text"), fmt) if body else []
    out: list[dict[str, Any]] = []
    header_values: list[dict[str, Any]] = []
    body_values: list[dict[str, Any]]
    if isinstance(parameters, Mapping):
        unknown = [n for n in parameters if components is not None and n not in head_names + body_names]
        if unknown:
            known = _labels(list(dict.fromkeys(head_names + body_names))) or "none"
            raise Unbuildable(
                Mismatch(
                    "body", label(unknown[0]), f"the template has no {label(unknown[0])}; it has {known}"
                )
            )
        header_values = [_named_text(n, parameters[n]) for n in head_names if n in parameters]
        names = body_names if components is not None else list(parameters)
        body_values = [_named_text(n, parameters[n]) for n in names if n in parameters]
    else:
        values = list(parameters)
        header_values = [_text_parameter(v) for v in values[: len(head_names)]]
        body_values = [_text_parameter(v) for v in values[len(head_names) :]]
    if header is not None:
        if head is not None and head_kind is None:
            raise Unbuildable(
                Mismatch(
                    "header",
                    "header",
                    "the template's header is text: its placeholders come from `parameters`",
                )
            )
        kind = str(header.get("type") or head_kind or "")
        if not kind:
            raise Unbuildable(
                Mismatch(
                    "header", "type", "the registry does not know this template's header: give header.type"
                )
            )
        header_values.append(dict(header) if "type" in header else {"type": kind, kind: dict(header)})
    if header_values:
        out.append({"type": "header", "parameters": header_values})
    if body_values:
        out.append({"type": "body", "parameters": body_values})
    listed = [b for b in ((template.get("BUTTONS") or {}).get("buttons") or []) if isinstance(b, Mapping)]
    for index, value in sorted((buttons or {}).items()):
        out.append(_button_component(index, value, listed, known=components is not None))
    return out


def _button_component(index: int, value: str, listed: list[Mapping[str, Any]], known: bool) -> dict[str, Any]:
    if not known:
        raise Unbuildable(
            Mismatch(
                "button",
                "index",
                "the registry does not know this template's buttons: use POST /v1/messages",
                index,
            )
        )
    if not 0 <= index < len(listed):
        raise Unbuildable(
            Mismatch(
                "button", "index", f"button {index}: the template has {_plural(len(listed), 'button')}", index
            )
        )
    kind = str(listed[index].get("type") or "").upper()
    sub_type = BUTTON_SUB_TYPES.get(kind)
    parameter: dict[str, Any]
    if sub_type == "url":
        parameter = {"type": "text", "text": value}
    elif sub_type == "copy_code":
        parameter = {"type": "coupon_code", "coupon_code": value}
    elif sub_type == "quick_reply":
        parameter = {"type": "payload", "payload": value}
    else:
        raise Unbuildable(Mismatch("button", "index", f"button {index} ({kind}) takes no value here", index))
    return {"type": "button", "sub_type": sub_type, "index": str(index), "parameters": [parameter]}


def _text_parameter(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def _named_text(name: str, value: str) -> dict[str, Any]:
    return {"type": "text", "parameter_name": name, "text": value}


# --- helpers ------------------------------------------------------------------------------------------------
def _by_type(components: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for c in components:
        if isinstance(c, Mapping):
            out.setdefault(str(c.get("type") or "").upper(), c)
    return out


def _parameters(part: Mapping[str, Any] | None) -> list[Any] | None:
    """A sent component's parameters; [] when absent, None when not a list."""
    if part is None or part.get("parameters") is None:
        return []
    parameters = part.get("parameters")
    return parameters if isinstance(parameters, list) else None


def _index(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value)
    else:
        return None
    return index if 0 <= index <= MAX_BUTTON_INDEX else None


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _labels(names: list[str]) -> str:
    return ", ".join(label(n) for n in names)


def _plural(n: int, noun: str = "parameter") -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
