"""Meta's shapes as the simulator renders them: errors, send validation, wa_ids, wamids, webhooks.

Deliberately independent of the gate's own parsing (customer/identity.py, webhook/parse.py): a test double
that shared the gate's logic would agree with the gate's bugs.
"""

import base64
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# code → (HTTP status, title, error_data.details). HTTP statuses follow the "HTTP Status Code" column of
# Meta's error-code reference (developers.facebook.com/documentation/business-messaging/whatsapp/support/
# error-codes): 130429 is a 400 there, not a 429; a missing template is a 404.
ERRORS: dict[int, tuple[int, str, str]] = {
    100: (400, "Invalid parameter", "Invalid parameter"),
    190: (401, "Invalid OAuth access token - Cannot parse access token", ""),
    130429: (400, "Rate limit hit", "Cloud API message throughput has been reached."),
    130472: (
        400,
        "User's number is part of an experiment",
        "The customer is in a marketing experiment group.",
    ),
    131000: (500, "Something went wrong", "Something went wrong. Please retry later."),
    131047: (
        400,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied "
        "to this number.",
    ),
    131026: (
        400,
        "Message undeliverable",
        "The customer cannot receive it: not a WhatsApp number, an old app, or new terms not accepted.",
    ),
    131049: (
        400,
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "The customer has had enough marketing messages for now; try again in 24 hours at the earliest.",
    ),
    131056: (
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages from this number to this customer in a short time.",
    ),
    132000: (400, "Number of parameters does not match the expected number of params", ""),
    132001: (404, "Template name does not exist in the translation", ""),
    132015: (400, "Template is Paused", "Template is paused due to low quality so it cannot be sent."),
    132016: (
        400,
        "Template is Disabled",
        "Template has been paused too many times due to low quality and is now permanently disabled.",
    ),
}
RE_ENGAGEMENT = 131047
# The documentation link Meta puts in the errors of its status webhooks (`errors[].href`).
ERROR_CODES_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
FREE_FORM_TYPES = frozenset(
    {
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "reaction",
    }
)
MEDIA_TYPES = frozenset({"image", "audio", "video", "document", "sticker"})
PHONE_CHARS = re.compile(r"^\+?[\d\s().\-]+$")
# Meta answers the account's real wa_id. For Brazil that is, for most accounts, the number without the
# mobile ninth digit; the simulator always drops it (a fixed, documented choice).
BR_NINTH_DIGIT = re.compile(r"^55(\d{2})9([6-9]\d{7})$")  # mobile numbers: 9 then 6–9


class MetaError(Exception):
    """An error Meta would answer synchronously: `{"error": {message, type, code, error_data, fbtrace_id}}`."""

    def __init__(self, code: int, details: str | None = None) -> None:
        self.code = code
        self.http_status, self.title, default = ERRORS[code]
        self.details = details if details is not None else default
        super().__init__(f"(#{code}) {self.title}")

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": str(self), "type": "OAuthException", "code": self.code}
        if self.details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = "A" + secrets.token_urlsafe(17)
        return {"error": error}

    def as_status_error(self) -> dict[str, Any]:
        """The same error as it appears in a failed status webhook's `errors[]`."""
        return {
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details},
            "href": ERROR_CODES_HREF,
        }


@dataclass(frozen=True, slots=True)
class Send:
    """A send body that passed Meta's synchronous validation."""

    input: str
    wa_id: str | None
    user_id: str | None
    type: str
    content: Any
    callback: str | None

    @property
    def template(self) -> dict[str, Any]:
        return self.content if self.type == "template" and isinstance(self.content, dict) else {}


def wa_id_for(phone: str) -> str | None:
    """The wa_id Meta would answer for a phone number as written; None when it is not one."""
    if not PHONE_CHARS.match(phone):
        return None
    digits = re.sub(r"\D", "", phone)
    if not 7 <= len(digits) <= 15:
        return None
    return BR_NINTH_DIGIT.sub(r"55\1\2", digits)


def new_wamid(wa_id: str | None) -> str:
    raw = f"{wa_id or ''}:{uuid.uuid4().hex}".encode()
    return "wamid.SANDBOX" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def validate_send(body: object) -> Send:
    """Meta's synchronous checks on a message body; any failure is a code-100 error naming the parameter."""
    if not isinstance(body, dict):
        raise MetaError(100, "The request body must be a JSON object.")
    if body.get("messaging_product") != "whatsapp":
        raise MetaError(100, "The parameter messaging_product is required and must be 'whatsapp'.")
    to, recipient = body.get("to"), body.get("recipient")
    if not isinstance(to, str | None) or not isinstance(recipient, str | None) or not (to or recipient):
        raise MetaError(100, "The parameter to (or recipient) is required.")
    wa_id = wa_id_for(to) if to else None
    if to and wa_id is None:
        raise MetaError(100, f"The parameter to ({to!r}) is not a valid phone number.")
    kind = body.get("type", "text")  # Meta defaults the type to text
    if kind != "template" and kind not in FREE_FORM_TYPES:
        raise MetaError(100, f"The parameter type ({kind!r}) is not a supported message type.")
    content = body.get(kind)
    if not isinstance(content, list if kind == "contacts" else dict):
        raise MetaError(100, f"The parameter {kind} is required for messages of type {kind}.")
    _check_content(kind, content)
    callback = body.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        raise MetaError(
            100, "The parameter biz_opaque_callback_data must be a string of at most 512 characters."
        )
    return Send(str(to or recipient), wa_id, recipient or None, kind, content, callback)


def validate_status_update(body: dict[str, Any]) -> None:
    """Mark as read (`status: "read"`, a `message_id`, optionally `typing_indicator: {type: "text"}`): Meta's
    code-100 refusals otherwise. A recipient is no part of it."""
    if body.get("messaging_product") != "whatsapp":
        raise MetaError(100, "The parameter messaging_product is required and must be 'whatsapp'.")
    if body.get("status") != "read":
        raise MetaError(100, "The parameter status must be 'read'.")
    if not isinstance(body.get("message_id"), str) or not body["message_id"]:
        raise MetaError(100, "The parameter message_id is required.")
    indicator = body.get("typing_indicator")
    if indicator is not None and indicator != {"type": "text"}:
        raise MetaError(100, "The parameter typing_indicator must be {'type': 'text'}.")
    if "to" in body or "recipient" in body:
        raise MetaError(100, "A status update takes a message_id, not a recipient.")


def _check_content(kind: str, content: Any) -> None:
    if kind == "text" and not (isinstance(content.get("body"), str) and content["body"]):
        raise MetaError(100, "The parameter text['body'] is required.")
    if kind in MEDIA_TYPES and not (content.get("id") or content.get("link")):
        raise MetaError(100, f"The parameter {kind}['id'] or {kind}['link'] is required.")
    if kind == "reaction" and not content.get("message_id"):
        raise MetaError(100, "The parameter reaction['message_id'] is required.")
    if kind == "template":
        language = content.get("language")
        if not isinstance(content.get("name"), str) or not content["name"]:
            raise MetaError(100, "The parameter template['name'] is required.")
        if not isinstance(language, dict) or not isinstance(language.get("code"), str):
            raise MetaError(100, "The parameter template['language']['code'] is required.")


def envelope(waba_id: str, phone_number_id: str, display_phone_number: str, **value: Any) -> dict[str, Any]:
    """Meta's webhook envelope for one `messages` change."""
    metadata = {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "changes": [
                    {
                        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def pricing(category: str, window_open: bool, free_entry_point: bool = False) -> dict[str, Any]:
    """Per-message pricing (PMP): everything inside a free-entry-point window is free and reported as a
    `referral_conversion`; otherwise service replies and utility templates inside the window are free."""
    if free_entry_point:
        return {
            "billable": False,
            "pricing_model": "PMP",
            "category": "referral_conversion",
            "type": "free_entry_point",
        }
    free = category == "service" or (category == "utility" and window_open)
    return {
        "billable": not free,
        "pricing_model": "PMP",
        "category": category,
        "type": "free_customer_service" if free else "regular",
    }


def unix(at: datetime) -> str:
    return str(int(at.timestamp()))
