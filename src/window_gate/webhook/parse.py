"""Reading Meta's webhook deliveries into window facts. Pure: no I/O, tolerant of anything unexpected."""

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from window_gate.consent.rules import comparable
from window_gate.graph.reactions import MARKETING_HOLDS
from window_gate.message.status import MessageStatus

# Which user-sent `messages[].type` open or renew the customer service window (docs/meta-rules.md).
# Meta says "messages or calls"; reaction and unsupported are unsure: change a row to change the rule.
# A type not listed here does not open the window (fail closed) and is counted as `ignored`.
OPENS_WINDOW: dict[str, bool] = {
    "text": True,
    "image": True,
    "audio": True,
    "video": True,
    "document": True,
    "sticker": True,
    "location": True,
    "contacts": True,
    "button": True,
    "interactive": True,
    "order": True,
    "reaction": True,
    "unsupported": True,
    "system": False,  # user_changed_number and friends: an identity event, not the customer writing
    "request_welcome": False,  # Meta's first-contact signal, not a message (unsure)
    # Coexistence only: the customer edited (within 15 min) or deleted an earlier message. The earlier
    # message opened the window already; Meta does not say an edit restarts it (unsure), so neither does.
    "edit": False,
    "revoke": False,
}
# System messages saying one person now goes by other ids (their old ids are the message's sender).
IDENTITY_CHANGES = frozenset({"user_changed_number", "user_changed_user_id"})
USER_ID_UPDATE = "user_id_update"  # a field of its own: a BSUID replaced by a new one
RE_ENGAGEMENT = 131047  # Meta: more than 24 h since the customer last wrote
MARKETING_STOPPED = 131050  # Meta: the customer stopped marketing messages
MARKETING = "marketing"
# user_preferences categories → the gate's consent categories.
PREFERENCE_CATEGORIES = {"marketing_messages": MARKETING}
# user_preferences values → opted out? `signup`: the customer opted in through a signup link.
PREFERENCE_VALUES = {"stop": True, "resume": False, "signup": False}
REFERRAL_CONVERSION = "referral_conversion"  # conversation origin inside a free-entry-point window
TEMPLATE_STATUS = "message_template_status_update"
TEMPLATE_QUALITY = "message_template_quality_update"
# Meta documents the first name; the second matches its sibling fields' naming.
TEMPLATE_CATEGORY = ("template_category_update", "message_template_category_update")
TEMPLATE_COMPONENTS = "message_template_components_update"
TEMPLATE_FIELDS = frozenset({TEMPLATE_STATUS, TEMPLATE_QUALITY, *TEMPLATE_CATEGORY, TEMPLATE_COMPONENTS})
# Status events that end a state without naming the status they return to: an unarchived or unlocked
# template is approved again in the common case (unsure); the next sync corrects it if not.
RESTORED = {"UNARCHIVED": "APPROVED", "UNLOCKED": "APPROVED", "REINSTATED": "APPROVED"}
# Messages the business sent from the WhatsApp Business app (coexistence), echoed: recorded, never window
# facts. Meta documents the first name; integrators also report the second (unsure).
ECHO_FIELDS = frozenset({"smb_message_echoes", "message_echoes"})
NUMBER_QUALITY = "phone_number_quality_update"
# Where a quality update names the messaging limit, first found wins: Meta replaced the number's
# `current_limit` (removed in 2026) by the business portfolio's `max_daily_conversations_per_business`.
LIMIT_FIELDS = ("max_daily_conversations_per_business", "current_limit")
ACCOUNT_UPDATE = "account_update"
# The account_update events the gate keeps (the rest stay in the raw delivery only).
ACCOUNT_RESTRICTION = "ACCOUNT_RESTRICTION"
DISABLED_UPDATE = "DISABLED_UPDATE"
VOLUME_TIER = "VOLUME_BASED_PRICING_TIER_UPDATE"
AUTH_INTERNATIONAL = "AUTH_INTL_PRICE_ELIGIBILITY_UPDATE"

# What a delivery's `counts` may name, the labels of /metrics' window_gate_webhook_messages (webhook/
# service.py): anything else Meta sends (a new message type or field, a status word) is counted as `other`.
COUNTED_KINDS = frozenset(
    {
        *OPENS_WINDOW,
        *IDENTITY_CHANGES,
        *TEMPLATE_FIELDS,
        *(f"status_{status}" for status in MessageStatus),
        *("delivery", "messages", "status", "group", "call", "keyword", "echo", "user_preferences"),
        *(USER_ID_UPDATE, NUMBER_QUALITY, ACCOUNT_UPDATE),
    }
)
COUNTED_OUTCOMES = frozenset(
    {
        *("ignored", "recorded", "unknown_message", "opened", "duplicate", "linked", "unknown_number"),
        *("closed_by_meta", "free_entry_point", "stop", "resume", *PREFERENCE_VALUES),
        "not_registered",  # ALLOW_LISTED_NUMBERS_ONLY: a change for a number no admin registered, left out
    }
)
OTHER = "other"


@dataclass(frozen=True, slots=True)
class InboundEvent:
    phone_number_id: str
    wa_id: str | None
    user_id: str | None
    message_id: str
    type: str
    sent_at: datetime
    referral: dict[str, Any] | None
    words: tuple[str, ...] = ()  # short texts that may be a consent keyword, normalised (consent/rules.py)


@dataclass(frozen=True, slots=True)
class VerdictEvent:
    """What a status tells about the window: Meta closed it, or a free-entry-point window runs."""

    phone_number_id: str
    wa_id: str | None
    user_id: str | None
    closed_at: datetime | None
    fep_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """Meta's word on one message the business sent."""

    graph_message_id: str
    opaque: str | None  # biz_opaque_callback_data: the gate's own message id when the gate sent it
    status: str
    at: datetime
    errors: list[dict[str, Any]]
    pricing: dict[str, Any] | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """A customer stopped or resumed a category of messages (user_preferences, or Meta's 131050)."""

    phone_number_id: str
    wa_id: str | None
    user_id: str | None
    category: str
    opted_out: bool
    at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class IdentityEvent:
    """Ids that name one person: a changed number or BSUID (old and new), or a parent BSUID beside the
    BSUID. Linked, so that the window and the opt-outs follow the person."""

    wa_id: str | None  # the current ones, kept on the customer when it has none
    user_id: str | None
    aliases: tuple[str, ...]  # every id, current and former
    source: str


@dataclass(frozen=True, slots=True)
class HoldEvent:
    """Meta refused a marketing message to this customer for a while (131049, 130472, in a failed status)."""

    phone_number_id: str
    wa_id: str | None
    user_id: str | None
    code: int
    at: datetime


@dataclass(frozen=True, slots=True)
class TemplateEvent:
    """Meta's word on one template: its status, quality rating or category (None: not in this event)."""

    waba_id: str | None
    template_id: str
    name: str | None
    language: str | None
    status: str | None = None
    reason: str | None = None
    category: str | None = None
    previous_category: str | None = None
    quality: str | None = None
    components_changed: bool = False  # the stored components are stale until the next sync


@dataclass(frozen=True, slots=True)
class EchoEvent:
    """A message the business sent from the WhatsApp Business app, echoed by Meta."""

    phone_number_id: str
    message_id: str
    recipient: str | None  # `to`, as the business typed it (Meta: not always the wa_id)
    recipient_user_id: str | None
    type: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class QualityEvent:
    """Meta's word on a business number's quality and messaging limit (phone_number_quality_update)."""

    display_phone_number: str  # digits: Meta names the number only this way here
    event: str
    messaging_limit_tier: str | None
    at: datetime | None  # entry.time; None: not given (the receive time counts)


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """One account_update the gate keeps; only the facts its `event` carries are set."""

    waba_id: str
    event: str
    at: datetime | None  # entry.time; None: not given (the receive time counts)
    restrictions: list[dict[str, Any]] | None = None  # [{"type", "expires_at": ISO 8601 | None}]
    ban_state: str | None = None
    ban_date: str | None = None
    volume_tier: dict[str, Any] | None = None  # Meta's volume_tier_info
    auth_international: dict[str, Any] | None = None  # Meta's auth_international_rate_eligibility


@dataclass(slots=True)
class Delivery:
    inbound: list[InboundEvent] = field(default_factory=list)
    statuses: list[StatusEvent] = field(default_factory=list)
    verdicts: list[VerdictEvent] = field(default_factory=list)
    consents: list[ConsentEvent] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, outcome) for metrics

    def has_more(self) -> bool:
        """Anything besides customer messages and statuses: the part of ingest that needs a transaction."""
        return bool(
            self.verdicts
            or self.consents
            or self.templates
            or self.identities
            or self.holds
            or self.echoes
            or self.qualities
            or self.account
        )

    accounts: set[tuple[str, str]] = field(default_factory=set)  # (phone_number_id, waba_id) seen
    templates: list[TemplateEvent] = field(default_factory=list)
    identities: list[IdentityEvent] = field(default_factory=list)
    holds: list[HoldEvent] = field(default_factory=list)
    numbers: set[tuple[str, str]] = field(default_factory=set)  # (phone_number_id, display digits) seen
    phone_number_ids: set[str] = field(default_factory=set)  # every number a change names: relay filters
    unserved: set[str] = field(default_factory=set)  # numbers whose changes were left out (not registered)
    echoes: list[EchoEvent] = field(default_factory=list)
    qualities: list[QualityEvent] = field(default_factory=list)
    account: list[AccountEvent] = field(default_factory=list)


def parse_delivery(body: bytes, served: Collection[str] | None = None) -> Delivery:
    """Everything the window cares about in one delivery; the rest is counted and left alone. With
    ``served`` (ALLOW_LISTED_NUMBERS_ONLY's registered numbers), a change naming another number is left
    out, its number noted in ``unserved``."""
    out = Delivery()
    payload = orjson.loads(body)
    if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
        out.counts["delivery", "ignored"] += 1
        return out
    for entry in _dicts(payload.get("entry")):
        waba_id = _str(entry.get("id"))  # the WhatsApp Business Account
        sent_at = _timestamp(entry.get("time"))  # when Meta sent the change (not every field has its own)
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if not isinstance(value, dict):
                continue
            metadata = _dict(value.get("metadata"))
            pn = metadata.get("phone_number_id")
            if pn and served is not None and str(pn) not in served:
                out.unserved.add(str(pn))
                out.counts[str(change.get("field")), "not_registered"] += 1
                continue
            if pn:
                out.phone_number_ids.add(str(pn))
            if waba_id and pn:
                out.accounts.add((str(pn), waba_id))
            if pn and (display := _digits(metadata.get("display_phone_number"))):
                out.numbers.add((str(pn), display))
            kind = change.get("field")
            if kind == "messages":
                _messages(value, out)
            elif kind == "calls":
                _calls(value, out)
            elif kind == "user_preferences":
                _preferences(value, out)
            elif kind == USER_ID_UPDATE:
                _user_id_updates(value, out)
            elif kind in TEMPLATE_FIELDS:
                _template(str(kind), waba_id, value, out)
            elif kind in ECHO_FIELDS:
                _echoes(value, out)
            elif kind == NUMBER_QUALITY:
                _quality(value, sent_at, out)
            elif kind == ACCOUNT_UPDATE:
                _account(waba_id, value, sent_at, out)
            else:
                out.counts[str(kind), "ignored"] += 1
    return out


def _messages(value: dict[str, Any], out: Delivery) -> None:
    pn = str(_dict(value.get("metadata")).get("phone_number_id") or "")
    if not pn:
        out.counts["messages", "ignored"] += 1
        return
    # contacts[] carries the wa_id ↔ BSUID pairing when Meta knows both (and the parent BSUID).
    # str(): a well-signed delivery with odd types must still be acknowledged, never crash on hashing.
    contacts = _dicts(value.get("contacts"))
    wa_by_user = {str(c["user_id"]): str(c.get("wa_id") or "") for c in contacts if c.get("user_id")}
    user_by_wa = {str(c["wa_id"]): str(c.get("user_id") or "") for c in contacts if c.get("wa_id")}
    for c in contacts:
        _parent(c.get("wa_id"), c.get("user_id"), c.get("parent_user_id"), out)
    for m in _dicts(value.get("messages")):
        kind = str(m.get("type"))
        parent = m.get("from_parent_user_id")
        wa_id, user_id = _identity(m.get("from"), m.get("from_user_id") or parent, wa_by_user, user_by_wa)
        _parent(wa_id, user_id, parent, out)
        sent_at = _timestamp(m.get("timestamp"))
        if kind == "system" and _identity_change(wa_id, user_id, _dict(m.get("system")), out):
            continue
        if m.get("group_id"):  # a member writing in a group: not that member's one-to-one conversation
            out.counts["group", "ignored"] += 1
            continue
        if not OPENS_WINDOW.get(kind) or not m.get("id") or sent_at is None or not (wa_id or user_id):
            out.counts[kind, "ignored"] += 1
            continue
        referral = _dict(m.get("referral")) or None
        words = _words(kind, m.get(kind))
        out.inbound.append(InboundEvent(pn, wa_id, user_id, str(m["id"]), kind, sent_at, referral, words))
    for s in _dicts(value.get("statuses")):
        wa_id, user_id = _identity(s.get("recipient_id"), s.get("recipient_user_id"), wa_by_user, user_by_wa)
        at = _timestamp(s.get("timestamp"))
        if not (s.get("id") and s.get("status") and at is not None):
            # Nothing to record. A recorded status is counted by webhook/service.py as status_<status>,
            # recorded or unknown_message; what it says of the window, below, as status.
            out.counts["status", "ignored"] += 1
        else:
            opaque = s.get("biz_opaque_callback_data")
            out.statuses.append(
                StatusEvent(
                    str(s["id"]),
                    str(opaque) if opaque else None,
                    str(s["status"]),
                    at,
                    _dicts(s.get("errors")),
                    _dict(s.get("pricing")) or None,
                    s,
                )
            )
        if s.get("recipient_type") == "group":  # a send to a group says nothing of a member's window
            continue
        codes = [e.get("code") for e in _dicts(s.get("errors"))]  # a list: codes may be unhashable
        failed = s.get("status") == MessageStatus.FAILED
        closed = at if failed and RE_ENGAGEMENT in codes else None
        if failed and MARKETING_STOPPED in codes and at and (wa_id or user_id):
            out.consents.append(ConsentEvent(pn, wa_id, user_id, MARKETING, True, at, "meta_131050"))
        for code in (c for c in codes if isinstance(c, int) and c in MARKETING_HOLDS):
            if failed and at and (wa_id or user_id):
                out.holds.append(HoldEvent(pn, wa_id, user_id, code, at))
        conversation = _dict(s.get("conversation"))
        fep_until = None
        if _dict(conversation.get("origin")).get("type") == REFERRAL_CONVERSION:
            fep_until = _timestamp(conversation.get("expiration_timestamp"))
        if (closed or fep_until) and (wa_id or user_id):
            out.verdicts.append(VerdictEvent(pn, wa_id, user_id, closed, fep_until))
            out.counts["status", "closed_by_meta" if closed else "free_entry_point"] += 1


def _parent(wa_id: object, user_id: object, parent: object, out: Delivery) -> None:
    """A parent BSUID beside another id of the same person: one more alias of that customer."""
    others = _ids(wa_id, user_id)
    if (
        parent
        and others
        and str(parent) not in others
        and not any(parent in e.aliases for e in out.identities)
    ):
        out.identities.append(
            IdentityEvent(_str(wa_id), _str(user_id), (*others, str(parent)), "parent_user_id")
        )


def _identity_change(wa_id: str | None, user_id: str | None, system: dict[str, Any], out: Delivery) -> bool:
    """user_changed_number (new number, and the new BSUID it brings) or user_changed_user_id (new BSUID):
    the sender's ids and the new ones name one person. Field names vary between Meta's pages and SDKs:
    the new number is `wa_id` or `new_wa_id`; the former BSUID may also be `previous_user_id`."""
    kind = str(system.get("type"))
    if kind not in IDENTITY_CHANGES:
        return False
    new_wa, new_user = system.get("wa_id") or system.get("new_wa_id"), system.get("user_id")
    ids = _ids(wa_id, user_id, system.get("previous_user_id"), new_wa, new_user, system.get("parent_user_id"))
    if len(ids) > 1:
        out.identities.append(IdentityEvent(_str(new_wa) or wa_id, _str(new_user), ids, kind))
    out.counts[kind, "linked" if len(ids) > 1 else "ignored"] += 1
    return True


def _user_id_updates(value: dict[str, Any], out: Delivery) -> None:
    """`user_id_update`: a customer's BSUID replaced ({wa_id, user_id: {previous, current}})."""
    for u in _dicts(value.get(USER_ID_UPDATE)):
        change = _dict(u.get("user_id"))
        ids = _ids(u.get("wa_id"), change.get("previous"), change.get("current"))
        if change.get("current") and len(ids) > 1:
            out.identities.append(
                IdentityEvent(_str(u.get("wa_id")), _str(change["current"]), ids, USER_ID_UPDATE)
            )
            out.counts[USER_ID_UPDATE, "linked"] += 1
        else:
            out.counts[USER_ID_UPDATE, "ignored"] += 1


def _ids(*ids: object) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(i) for i in ids if i))


def _calls(value: dict[str, Any], out: Delivery) -> None:
    """A call the customer placed opens the window like a message (shape per Meta's Calling API; unsure)."""
    pn = str(_dict(value.get("metadata")).get("phone_number_id") or "")
    for c in _dicts(value.get("calls")):
        sent_at = _timestamp(c.get("timestamp"))
        user_call = str(c.get("direction", "")).upper() == "USER_INITIATED" and c.get("event") == "connect"
        if pn and user_call and c.get("id") and c.get("from") and sent_at:
            out.inbound.append(InboundEvent(pn, str(c["from"]), None, str(c["id"]), "call", sent_at, None))
        else:
            out.counts["call", "ignored"] += 1


def _preferences(value: dict[str, Any], out: Delivery) -> None:
    """Marketing opt-outs from the customer's own settings (docs/meta-rules.md: webhooks)."""
    pn = str(_dict(value.get("metadata")).get("phone_number_id") or "")
    for p in _dicts(value.get("user_preferences")):
        category = PREFERENCE_CATEGORIES.get(str(p.get("category")))
        at = _timestamp(p.get("timestamp"))
        wa_id, user_id = p.get("wa_id"), p.get("user_id")
        opted_out = PREFERENCE_VALUES.get(str(p.get("value")))
        if pn and category and at and opted_out is not None and (wa_id or user_id):
            out.consents.append(
                ConsentEvent(pn, _str(wa_id), _str(user_id), category, opted_out, at, "user_preferences")
            )
            out.counts["user_preferences", str(p["value"])] += 1
        else:
            out.counts["user_preferences", "ignored"] += 1


def _words(kind: str, part: object) -> tuple[str, ...]:
    """What the customer typed or tapped, if short enough to be a keyword: the text body, a quick-reply
    button's payload and label, an interactive reply's id and title."""
    if not isinstance(part, dict):
        return ()
    texts: tuple[object, ...]
    if kind == "text":  # the common case, kept to one lookup and one comparison
        word = comparable(part.get("body"))
        return (word,) if word else ()
    if kind == "button":
        texts = (part.get("payload"), part.get("text"))
    elif kind == "interactive":
        reply = part.get("button_reply") or part.get("list_reply")
        texts = (reply.get("id"), reply.get("title")) if isinstance(reply, dict) else ()
    else:
        return ()
    return tuple(word for text in texts if (word := comparable(text)))


def _template(kind: str, waba_id: str | None, value: dict[str, Any], out: Delivery) -> None:
    """Template status, quality and category updates: the registry stays current between syncs."""
    template_id = _str(value.get("message_template_id"))
    name, language = _str(value.get("message_template_name")), _str(value.get("message_template_language"))
    event = None
    if template_id and kind == TEMPLATE_STATUS and value.get("event"):
        status = str(value["event"]).upper()
        info = _dict(value.get("other_info"))
        reason = _str(value.get("reason")) if value.get("reason") != "NONE" else None
        event = TemplateEvent(
            waba_id,
            template_id,
            name,
            language,
            status=RESTORED.get(status, status),
            reason=reason or _str(info.get("description") or info.get("title")),
            category=_upper(value.get("message_template_category")),
        )
    elif template_id and kind == TEMPLATE_COMPONENTS:
        event = TemplateEvent(waba_id, template_id, name, language, components_changed=True)
    elif template_id and kind == TEMPLATE_QUALITY and value.get("new_quality_score"):
        quality = _upper(value.get("new_quality_score"))
        event = TemplateEvent(waba_id, template_id, name, language, quality=quality)
    elif template_id and kind in TEMPLATE_CATEGORY and value.get("new_category"):
        # An impending change names the current category as new_category (and correct_category next to
        # it); a completed one names previous_category. Either way new_category is the one in force.
        category, previous = _upper(value.get("new_category")), _upper(value.get("previous_category"))
        event = TemplateEvent(
            waba_id, template_id, name, language, category=category, previous_category=previous
        )
    if event is None:
        out.counts[kind, "ignored"] += 1
        return
    out.templates.append(event)
    out.counts[kind, "recorded"] += 1


def _echoes(value: dict[str, Any], out: Delivery) -> None:
    """What the business wrote from the WhatsApp Business app: kept, never a window fact."""
    pn = str(_dict(value.get("metadata")).get("phone_number_id") or "")
    for m in _dicts(value.get("message_echoes")):
        sent_at = _timestamp(m.get("timestamp"))
        if pn and m.get("id") and sent_at is not None:
            echo = EchoEvent(
                pn,
                str(m["id"]),
                _str(m.get("to")),
                _str(m.get("to_user_id")),
                _str(m.get("type")) or "",
                sent_at,
            )
            out.echoes.append(echo)
            out.counts["echo", "recorded"] += 1
        else:
            out.counts["echo", "ignored"] += 1


def _quality(value: dict[str, Any], at: datetime | None, out: Delivery) -> None:
    """A business number's quality event and messaging limit; Meta names the number by its display digits."""
    display, event = _digits(value.get("display_phone_number")), _upper(value.get("event"))
    if not display or not event:
        out.counts[NUMBER_QUALITY, "ignored"] += 1
        return
    tier = next((_upper(value[f]) for f in LIMIT_FIELDS if value.get(f)), None)
    out.qualities.append(QualityEvent(display, event, tier, at))


def _account(waba_id: str | None, value: dict[str, Any], at: datetime | None, out: Delivery) -> None:
    """The account_update events the gate keeps: restrictions, bans, volume pricing tiers, eligibility for
    authentication-international rates."""
    event = _upper(value.get("event"))
    kept: AccountEvent | None = None
    if waba_id and event == ACCOUNT_RESTRICTION:
        restrictions = [
            {"type": str(r["restriction_type"]), "expires_at": _iso(_moment(r.get("expiration")))}
            for r in _dicts(value.get("restriction_info"))
            if r.get("restriction_type")
        ]
        kept = AccountEvent(waba_id, event, at, restrictions=restrictions)
    elif waba_id and event == DISABLED_UPDATE and (ban := _dict(value.get("ban_info"))).get("waba_ban_state"):
        state, date = _upper(ban.get("waba_ban_state")), _str(ban.get("waba_ban_date"))
        kept = AccountEvent(waba_id, event, at, ban_state=state, ban_date=date)
    elif waba_id and event == VOLUME_TIER and (tier := _dict(value.get("volume_tier_info"))).get("tier"):
        kept = AccountEvent(waba_id, event, at, volume_tier=tier)
    elif (
        waba_id
        and event == AUTH_INTERNATIONAL
        and isinstance(eligibility := value.get("auth_international_rate_eligibility"), dict)
    ):
        kept = AccountEvent(waba_id, event, at, auth_international=eligibility)
    if kept is None:
        out.counts[ACCOUNT_UPDATE, "ignored"] += 1
        return
    out.account.append(kept)
    out.counts[ACCOUNT_UPDATE, "recorded"] += 1


def _digits(value: object) -> str | None:
    """A phone number as digits only: Meta writes display numbers with or without `+` and separators."""
    if not isinstance(value, str):
        return None
    return re.sub(r"[^0-9]", "", value) or None


def _moment(value: object) -> datetime | None:
    """Unix seconds (a number or digits), or ISO 8601: Meta's restriction expirations come either way."""
    if isinstance(value, str) and not value.strip().isdigit():
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return _timestamp(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _upper(value: object) -> str | None:
    return str(value).upper() if value else None


def _str(value: object) -> str | None:
    return str(value) if value else None


def _identity(
    wa_id: object, user_id: object, wa_by_user: dict[str, Any], user_by_wa: dict[str, Any]
) -> tuple[str | None, str | None]:
    wa = str(wa_id) if wa_id else None
    user = str(user_id) if user_id else None
    if wa is None and user is not None:
        wa = wa_by_user.get(user) or None
    if user is None and wa is not None:
        user = user_by_wa.get(wa) or None
    return wa, user


def _timestamp(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(str(value)), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
