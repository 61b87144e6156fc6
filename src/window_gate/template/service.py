"""The template registry: synced from Meta, kept current by webhooks and by Meta's answers, and the check
every template send passes before it leaves (docs/meta-rules.md: templates).

Which registry a send is checked against: the WhatsApp Business Account of its phone number (learnt from
webhooks), else the only account the gate knows of. When there is none, or that account was never synced
completely, a template the registry does not know passes unchecked (`TemplateInfo.checked` False, category
None): a gate that never synced still sends, and Meta remains the judge (132001).
"""

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from window_gate.apikey.rules import Caller
from window_gate.config import Settings
from window_gate.customer.identity import parse_customer
from window_gate.errors import (
    Forbidden,
    GraphError,
    GraphFailure,
    GraphUnreadable,
    TemplateNotApproved,
    TemplateNotFound,
    TemplateParametersInvalid,
    ValidationFailed,
)
from window_gate.graph.client import GraphClient
from window_gate.template import repository, rules
from window_gate.template.repository import DELETED
from window_gate.template.schemas import (
    AccountSyncOut,
    MetaErrorOut,
    TemplateOut,
    TemplatePage,
    TemplateSendIn,
)

APPROVED = "APPROVED"
NOT_FOUND = 132001  # missing in that language, or not approved
# Meta's send-time template answers the registry learns from; 132000 / 132012 (parameters) and 132001 are
# recorded on the template, 132015 / 132016 also set its status.
LEARNED_STATUS: dict[int, str | None] = {
    132000: None,
    NOT_FOUND: None,
    132012: None,
    132015: "PAUSED",
    132016: "DISABLED",
}
MAX_PAGES = 1000  # 100 a page: far beyond Meta's 6,000 templates per account
HINT = "`GET /v1/templates` shows what the registry knows; `POST /v1/templates/sync` refreshes it from Meta"


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """What a send learns about its template: the category for pricing and the marketing opt-out check."""

    name: str
    language: str
    category: str | None  # MARKETING | UTILITY | AUTHENTICATION; None when the registry cannot say
    waba_id: str | None
    template_id: str | None
    status: str | None
    checked: bool  # the registry knew the template: status checked (parameters too, once synced)


@dataclass(slots=True)
class AccountSync:
    waba_id: str
    templates: int = 0
    deleted: int = 0
    error: str | None = None

    def public(self) -> AccountSyncOut:
        return AccountSyncOut(
            waba_id=self.waba_id, templates=self.templates, deleted=self.deleted, error=self.error
        )


# --- the send-time check ------------------------------------------------------------------------------------
async def check_send(conn: AsyncConnection, phone_number_id: str, template: dict[str, Any]) -> TemplateInfo:
    """Refuse a template send Meta would refuse: TemplateNotFound (no such name in that language),
    TemplateNotApproved (status other than APPROVED, with Meta's reason), TemplateParametersInvalid (the
    component and parameter at fault). Passes unchecked what a never-synced registry does not know."""
    name, language = name_and_language(template)
    waba_id, row = await sendable(conn, phone_number_id, name, language)
    if row is None:
        return TemplateInfo(name, language, None, waba_id, None, None, checked=False)
    if row.components is not None and row.components_stale_since is None:  # stale: Meta judges until a sync
        mismatches = rules.check_parameters(row.components, row.parameter_format, template.get("components"))
        if mismatches:
            first = mismatches[0]
            more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
            raise _parameters_invalid(name, language, waba_id, row, mismatches, f"{first.detail}{more}")
    return TemplateInfo(name, language, row.category, waba_id, row.id, row.status, checked=True)


async def sendable(
    conn: AsyncConnection, phone_number_id: str, name: str, language: str
) -> tuple[str | None, Row[Any] | None]:
    """(account, template) for a send from this number, refusing a template that is missing in that
    language or not approved; the template is None when the registry has nothing to check against."""
    waba_id = await repository.waba_of(conn, phone_number_id)
    if waba_id is None:
        return None, None
    found = await repository.candidates(conn, waba_id, name)
    row = pick(found.rows, language)
    subject = {"template": {"name": name, "language": language}, "waba_id": waba_id}
    languages = sorted({r.language for r in found.rows if r.status != DELETED})
    if row is None or row.status == DELETED:
        if row is None and not found.synced:
            return waba_id, None
        elsewhere = f"; it exists in {', '.join(languages)}" if languages else ""
        gone = " (deleted)" if row is not None else ""
        raise TemplateNotFound(
            f"template {name!r} does not exist in language {language!r}{gone}{elsewhere}",
            **subject,
            languages=languages,
            hint=HINT,
        )
    if row.meta_error_code == NOT_FOUND:
        at = row.meta_error_at.isoformat()
        raise TemplateNotFound(
            f"Meta answered {NOT_FOUND} for template {name!r} in {language!r} at {at}: it does not exist "
            "in that language or is not approved",
            **subject,
            languages=languages,
            meta_error={"code": NOT_FOUND, "at": at},
            hint=HINT,
        )
    if row.status != APPROVED:
        because = f": {row.reason}" if row.reason else ""
        raise TemplateNotApproved(
            f"template {name!r} ({language}) is {row.status}{because}; only APPROVED templates can be sent",
            **subject,
            template_id=row.id,
            template_status=row.status,  # not `status`: that is the problem's HTTP status
            reason=row.reason,
        )
    return waba_id, row


def _parameters_invalid(
    name: str,
    language: str,
    waba_id: str | None,
    row: Row[Any] | None,
    mismatches: list[rules.Mismatch],
    detail: str,
) -> TemplateParametersInvalid:
    first = mismatches[0]
    return TemplateParametersInvalid(
        f"template {name!r} ({language}): {detail}",
        template={"name": name, "language": language},
        waba_id=waba_id,
        **({"template_id": row.id, "parameter_format": row.parameter_format} if row is not None else {}),
        component=first.component,
        parameter=first.parameter,
        **({"index": first.index} if first.index is not None else {}),
        problems=[m.public() for m in mismatches],
    )


async def learn_from_meta_error(
    conn: AsyncConnection, phone_number_id: str, template: dict[str, Any], code: int
) -> None:
    """Meta refused a template send (synchronously or in a failed status): remember it on the template.
    132015 / 132016 set PAUSED / DISABLED; 132001 makes later sends refused `template_not_found`; 132000
    and 132012 are recorded for ops. A sync or a status webhook replaces all of it."""
    if code not in LEARNED_STATUS:
        return
    try:
        name, language = name_and_language(template)
    except ValidationFailed:
        return
    waba_id = await repository.waba_of(conn, phone_number_id)
    if waba_id is None:
        return
    status = LEARNED_STATUS[code]
    await repository.record_meta_error(
        conn,
        waba_id=waba_id,
        name=name,
        language=language,
        code=code,
        status=status,
        reason=f"Meta answered {code} to a send" if status else None,
    )


def name_and_language(template: Mapping[str, Any]) -> tuple[str, str]:
    name = template.get("name")
    language = template.get("language")
    code = language.get("code") if isinstance(language, Mapping) else None
    if not isinstance(name, str) or not name or not isinstance(code, str) or not code:
        raise ValidationFailed("a template needs `name` and `language.code`")
    return name, code


def pick(rows: Sequence[Row[Any]], language: str) -> Row[Any] | None:
    """The template of that language: a live one before a deleted one, the latest changed first."""
    matching = [r for r in rows if r.language == language]
    matching.sort(key=lambda r: (r.status != DELETED, r.updated_at), reverse=True)
    return matching[0] if matching else None


# --- sync ---------------------------------------------------------------------------------------------------
async def accounts_to_sync(
    conn: AsyncConnection, settings: Settings, caller: Caller, only: Sequence[str] | None
) -> list[str]:
    """The accounts asked for; by default the configured ones (the simulator's in sandbox mode) plus every
    account learnt from webhooks or synced before. A key limited to numbers: only its numbers' accounts
    (phone_numbers); one it cannot prove is its own is refused, not skipped."""
    if caller.phone_number_ids:
        theirs = await repository.accounts_of(conn, sorted(caller.phone_number_ids))
        foreign = [w for w in only or () if w not in theirs]
        if foreign:
            raise Forbidden(
                f"this key may not sync account {foreign[0]}: it is not the account of any of its numbers",
                waba_id=foreign[0],
            )
        return list(dict.fromkeys(only)) if only else theirs
    if only:
        return list(dict.fromkeys(only))
    return list(dict.fromkeys([*settings.template_accounts, *await repository.known_accounts(conn)]))


async def sync(engine: AsyncEngine, graph: GraphClient, waba_ids: Sequence[str]) -> list[AccountSync]:
    """Pull every template of each account from the Graph API (cursor paging) and replace the registry's
    view of it in one transaction per account. An account that fails is left as it was."""
    results = []
    for waba_id in waba_ids:
        result = AccountSync(waba_id)
        listed: list[dict[str, Any]] = []
        try:
            listed = await _listing(graph, waba_id)
        except GraphError as exc:
            result.error = f"Meta answered ({exc.code}) {exc.message}" + (
                f": {exc.details}" if exc.details else ""
            )
        except GraphFailure as exc:
            result.error = f"the Graph API gave no usable answer: {exc}"
        if result.error is None:
            async with engine.begin() as conn:
                result.deleted = await repository.replace_account(conn, waba_id, listed)
            result.templates = len(listed)
        results.append(result)
    return results


async def _listing(graph: GraphClient, waba_id: str) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    after: str | None = None
    for _ in range(MAX_PAGES):
        page = await graph.list_templates(waba_id, after)
        for item in page["data"]:
            template = _listed(item)
            if template is not None:
                by_id[template["id"]] = template
        paging = _dict(page.get("paging"))
        cursors = _dict(paging.get("cursors"))
        following = cursors.get("after")
        if not paging.get("next") or not isinstance(following, str) or not following or following == after:
            return list(by_id.values())
        after = following
    raise GraphUnreadable(f"more than {MAX_PAGES} pages of templates: giving up")


def _listed(item: object) -> dict[str, Any] | None:
    """One template as Meta lists it, in the registry's columns; None when it lacks its identity."""
    if not isinstance(item, dict):
        return None
    identity = [item.get(k) for k in ("id", "name", "language", "status")]
    if not all(isinstance(v, str | int) and str(v) for v in identity):
        return None
    quality = item.get("quality_score")
    components = item.get("components")
    reason = item.get("rejected_reason")
    return {
        "id": str(item["id"]),
        "name": str(item["name"]),
        "language": str(item["language"]),
        "status": str(item["status"]).upper(),
        "category": _upper(item.get("category")),
        "previous_category": _upper(item.get("previous_category")),
        "parameter_format": _upper(item.get("parameter_format")) or rules.POSITIONAL,
        "components": components if isinstance(components, list) else None,
        "quality": _upper(quality.get("score")) if isinstance(quality, dict) else None,
        "reason": str(reason) if reason and reason != "NONE" else None,
    }


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _upper(value: object) -> str | None:
    return str(value).upper() if isinstance(value, str) and value else None


# --- listing ------------------------------------------------------------------------------------------------
async def readable_accounts(
    conn: AsyncConnection, caller: Caller, waba_id: str | None, phone_number_id: str | None
) -> list[str] | None:
    """The accounts a listing covers (None: all): those asked for, within the accounts of the key's
    phone numbers when the key is limited to some."""
    asked = [waba_id] if waba_id is not None else None
    numbers = [phone_number_id] if phone_number_id is not None else sorted(caller.phone_number_ids)
    if not numbers:
        return asked
    theirs = {w for pn in numbers if (w := await repository.waba_of(conn, pn)) is not None}
    if phone_number_id is None and waba_id is not None and waba_id not in theirs:
        raise Forbidden(f"this key may not read the templates of account {waba_id}", waba_id=waba_id)
    return sorted(theirs if asked is None else theirs & set(asked))


async def listing(
    conn: AsyncConnection,
    *,
    waba_ids: Sequence[str] | None,
    name: str | None,
    language: str | None,
    status: str | None,
    category: str | None,
    after: str | None,
    limit: int,
) -> TemplatePage:
    rows = await repository.find(
        conn,
        waba_ids=waba_ids,
        name=name,
        language=language,
        status=status.upper() if status else None,
        category=category.upper() if category else None,
        after=_decode(after) if after else None,
        limit=limit + 1,
    )
    page = rows[:limit]
    last = page[-1] if page and len(rows) > limit else None
    return TemplatePage(
        templates=[out(r) for r in page],
        next_after=_encode((last.waba_id, last.name, last.language, last.id)) if last is not None else None,
    )


def out(row: Row[Any]) -> TemplateOut:
    error = (
        MetaErrorOut(code=row.meta_error_code, at=row.meta_error_at)
        if row.meta_error_code is not None and row.meta_error_at is not None
        else None
    )
    return TemplateOut(
        id=row.id,
        waba_id=row.waba_id,
        name=row.name,
        language=row.language,
        status=row.status,
        category=row.category,
        previous_category=row.previous_category,
        quality=row.quality,
        reason=row.reason,
        parameter_format=row.parameter_format,
        components=row.components,
        components_stale_since=row.components_stale_since,
        last_meta_error=error,
        synced_at=row.synced_at,
        updated_at=row.updated_at,
    )


def _encode(key: tuple[str, str, str, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, str, str, str]:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        key = None
    if not (isinstance(key, list) and len(key) == 4 and all(isinstance(k, str) for k in key)):
        raise ValidationFailed("after: not a cursor this API gave out", parameter="after")
    return key[0], key[1], key[2], key[3]


# --- sending by name --------------------------------------------------------------------------------------
async def build_send(conn: AsyncConnection, name: str, body: TemplateSendIn) -> dict[str, Any]:
    """The Cloud API body (plus phone_number_id) for a template send by name: the registry's components
    place the values; what the registry does not know goes to the body as given. A missing or unapproved
    template is refused before its parameters are looked at."""
    waba_id, row = await sendable(conn, body.phone_number_id, name, body.language)
    known = row is not None and row.components is not None
    try:
        components = rules.build_components(
            row.components if known and row is not None else None,
            row.parameter_format if known and row is not None else None,
            body.parameters,
            body.header,
            body.buttons,
        )
    except rules.Unbuildable as exc:
        raise _parameters_invalid(
            name, body.language, waba_id, row, [exc.mismatch], exc.mismatch.detail
        ) from None
    template: dict[str, Any] = {"name": name, "language": {"code": body.language}}
    if components:
        template["components"] = components
    recipient = "recipient" if parse_customer(body.to).user_id else "to"
    return {
        "phone_number_id": body.phone_number_id,
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        recipient: body.to,
        "type": "template",
        "template": template,
    }
