"""The simulator's template registry: Meta's send-time checks and `message_templates` cursor paging."""

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import URL

from window_gate.sandbox.meta import MetaError

POSITIONAL = re.compile(r"\{\{\s*(\d+)\s*\}\}")
DEFAULT_PAGE, MAX_PAGE = 25, 1000
FIELDS = ("id", "name", "language", "status", "category", "parameter_format", "components")


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    name: str
    language: str
    category: str  # MARKETING | UTILITY | AUTHENTICATION
    status: str  # APPROVED | PAUSED | DISABLED | PENDING | REJECTED ...
    components: tuple[dict[str, Any], ...]
    parameter_format: str = "POSITIONAL"

    def expected_parameters(self, component: str) -> int:
        """Distinct `{{n}}` placeholders in the HEADER or BODY text."""
        texts = [c.get("text", "") for c in self.components if c.get("type") == component.upper()]
        return len({m for text in texts for m in POSITIONAL.findall(text)})

    def as_graph(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "category": self.category,
            "parameter_format": self.parameter_format,
            "components": list(self.components),
        }


def _body(text: str) -> dict[str, Any]:
    return {"type": "BODY", "text": text}


BUILT_IN: tuple[Template, ...] = (
    Template(
        "1000000000000001",
        "hello_world",
        "en_US",
        "UTILITY",
        "APPROVED",
        (
            {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
            _body(
                "Welcome and congratulations!! This message demonstrates your ability to send a WhatsApp "
                "message notification from the sandbox."
            ),
            {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"},
        ),
    ),
    Template(
        "1000000000000002",
        "order_update",
        "en",
        "UTILITY",
        "APPROVED",
        (_body("Hi {{1}}, your order {{2}} has shipped."),),
    ),
    Template(
        "1000000000000003",
        "spring_sale",
        "en",
        "MARKETING",
        "APPROVED",
        (_body("Hi {{1}}, our spring sale starts today: 20% off everything."),),
    ),
    Template("1000000000000004", "old_promo", "en", "MARKETING", "PAUSED", (_body("Last chance!"),)),
    Template("1000000000000005", "legacy_notice", "en", "UTILITY", "DISABLED", (_body("Notice."),)),
)


def check_send(registry: Sequence[Template], template: dict[str, Any]) -> Template:
    """Meta's send-time template checks: exists in that language, approved, parameter counts match."""
    name, language = template["name"], template["language"]["code"]
    found = next((t for t in registry if t.name == name and t.language == language), None)
    if found is None or found.status not in ("APPROVED", "PAUSED", "DISABLED"):
        # Meta answers 132001 for a template missing in that language and for one not (yet) approved.
        raise MetaError(132001, f"template name ({name}) does not exist in {language}")
    if found.status == "PAUSED":
        raise MetaError(132015)
    if found.status == "DISABLED":
        raise MetaError(132016)
    components = template.get("components") or []
    for part in ("header", "body"):
        given = sum(
            len(c.get("parameters") or [])
            for c in components
            if isinstance(c, dict) and str(c.get("type", "")).lower() == part
        )
        expected = found.expected_parameters(part)
        if given != expected:
            raise MetaError(
                132000,
                f"{part}: number of localizable_params ({given}) does not match the expected number of "
                f"params ({expected})",
            )
    return found


def page(
    registry: Sequence[Template],
    url: URL,  # the request's own, to build `paging.next` and `paging.previous`
    *,
    limit: str | None,
    after: str | None,
    before: str | None,
    fields: str | None,
    status: str | None,
    name: str | None,
) -> dict[str, Any]:
    """One page of `GET /{waba_id}/message_templates`, with Meta's opaque before/after cursors."""
    try:
        size = int(limit) if limit is not None else DEFAULT_PAGE
    except ValueError:
        raise MetaError(100, "The parameter limit must be an integer.") from None
    if not 1 <= size <= MAX_PAGE:
        raise MetaError(100, f"The parameter limit must be between 1 and {MAX_PAGE}.")
    items = [
        t
        for t in registry
        if (status is None or t.status == status.upper()) and (name is None or name.lower() in t.name.lower())
    ]
    if after is not None:
        start = _decode(after) + 1
    elif before is not None:
        start = max(0, _decode(before) - size)
    else:
        start = 0
    end = min(start + size, _decode(before) if before is not None and after is None else len(items))
    wanted = [f.strip() for f in fields.split(",") if f.strip()] if fields else list(FIELDS)
    data = [{k: v for k, v in t.as_graph().items() if k in wanted or k == "id"} for t in items[start:end]]
    paging: dict[str, Any] = {}
    if data:
        paging["cursors"] = {"before": _encode(start), "after": _encode(end - 1)}
        base = url.remove_query_params(["after", "before"]).include_query_params(limit=size)
        if end < len(items):
            paging["next"] = str(base.include_query_params(after=_encode(end - 1)))
        if start > 0:
            paging["previous"] = str(base.include_query_params(before=_encode(start)))
    return {"data": data, "paging": paging}


def _encode(index: int) -> str:
    return base64.urlsafe_b64encode(f"sandbox-template:{index}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, index = text.partition(":")
        if prefix != "sandbox-template":
            raise ValueError(cursor)
        return int(index)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise MetaError(100, f"The cursor {cursor!r} is not valid.") from None
