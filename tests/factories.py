"""Meta-shaped webhook payloads for tests and benchmarks."""

import time
import uuid
from typing import Any

import orjson

from window_gate.config import SANDBOX_APP_SECRET
from window_gate.webhook.signature import sign

PN = "106540352242922"
WABA = "102290129340398"


def inbound(
    wa_id: str | None = "5511987654321",
    *,
    ts: float | None = None,
    kind: str = "text",
    message_id: str | None = None,
    user_id: str | None = None,
    referral: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": message_id or f"wamid.{uuid.uuid4().hex}",
        "timestamp": str(int(ts if ts is not None else time.time())),
        "type": kind,
    }
    if wa_id:
        message["from"] = wa_id
    if user_id:
        message["from_user_id"] = user_id
    message[kind] = {"body": "hi"} if kind == "text" else {}
    if referral:
        message["referral"] = referral
    return message


def status(
    wa_id: str = "5511987654321", *, ts: float | None = None, state: str = "failed", code: int | None = 131047
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"wamid.{uuid.uuid4().hex}",
        "status": state,
        "timestamp": str(int(ts if ts is not None else time.time())),
        "recipient_id": wa_id,
    }
    if code is not None:
        out["errors"] = [{"code": code, "title": "Re-engagement message", "message": "Re-engagement message"}]
    return out


def delivery(
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    *,
    phone_number_id: str = PN,
    contacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
    }
    if messages is not None:
        value["messages"] = messages
        value["contacts"] = contacts or [
            {"profile": {"name": "Ana"}, "wa_id": m["from"]} for m in messages if m.get("from")
        ]
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": "messages", "value": value}]}],
    }


def signed(payload: dict[str, Any], secret: str = SANDBOX_APP_SECRET) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(payload)
    return body, {"X-Hub-Signature-256": sign(secret.encode(), body), "Content-Type": "application/json"}


# Helpers appended for the webhook tests: batching, calls, free-entry-point statuses, raw signing.


def sign_raw(body: bytes, secret: str = SANDBOX_APP_SECRET) -> dict[str, str]:
    """Headers for an arbitrary (even malformed) body, signed as Meta would."""
    return {"X-Hub-Signature-256": sign(secret.encode(), body), "Content-Type": "application/json"}


def one_entry(*payloads: dict[str, Any]) -> dict[str, Any]:
    """All the changes of several deliveries batched into a single entry."""
    changes = [c for p in payloads for e in p["entry"] for c in e["changes"]]
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": changes}]}


def many_entries(*payloads: dict[str, Any]) -> dict[str, Any]:
    """Several deliveries batched as separate entries of one POST."""
    return {"object": "whatsapp_business_account", "entry": [e for p in payloads for e in p["entry"]]}


def change(field: str, value: dict[str, Any], *, phone_number_id: str = PN) -> dict[str, Any]:
    """A delivery of one change of any field (calls, smb_message_echoes, ...)."""
    value = {"metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id}, **value}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"field": field, "value": value}]}],
    }


def call(
    wa_id: str = "5511987654321",
    *,
    ts: float | None = None,
    direction: str = "USER_INITIATED",
    event: str = "connect",
) -> dict[str, Any]:
    return {
        "id": f"wacid.{uuid.uuid4().hex}",
        "from": wa_id,
        "to": "15550001111",
        "event": event,
        "direction": direction,
        "timestamp": str(int(ts if ts is not None else time.time())),
    }


def referral(headline: str = "Spring sale") -> dict[str, Any]:
    return {
        "source_url": "https://fb.me/ad",
        "source_id": "120200000000000",
        "source_type": "ad",
        "headline": headline,
        "body": "Write to us",
        "media_type": "image",
        "ctwa_clid": f"ARA{uuid.uuid4().hex}",
    }


def fep_status(
    wa_id: str = "5511987654321", *, ts: float | None = None, expires: float, state: str = "delivered"
) -> dict[str, Any]:
    """A status for a message sent inside a free-entry-point window: Meta tells when it ends."""
    out = status(wa_id, ts=ts, state=state, code=None)
    out["conversation"] = {
        "id": uuid.uuid4().hex,
        "expiration_timestamp": str(int(expires)),
        "origin": {"type": "referral_conversion"},
    }
    out["pricing"] = {"billable": False, "pricing_model": "PMP", "category": "referral_conversion"}
    return out


def sent_status(
    wamid: str, opaque: str, wa_id: str, *, ts: float | None = None, state: str = "sent"
) -> dict[str, Any]:
    """Meta's status for a message the gate sent (`opaque`: its biz_opaque_callback_data); `sent` carries
    the conversation and the pricing, as Meta's does."""
    out = status(wa_id, ts=ts, state=state, code=None) | {"id": wamid, "biz_opaque_callback_data": opaque}
    if state == "sent":
        out["conversation"] = {
            "id": uuid.uuid4().hex,
            "expiration_timestamp": str(int(ts if ts is not None else time.time()) + 86_400),
            "origin": {"type": "service"},
        }
        out["pricing"] = {
            "billable": False,
            "pricing_model": "PMP",
            "category": "service",
            "type": "free_customer_service",
        }
    return out
