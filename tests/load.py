"""Clients of a `serve` process over real sockets, as the fault tests drive it: sends with an
Idempotency-Key and Meta's signed webhooks, each answer kept (0: no answer, the connection failed)."""

import threading

import httpx

from tests.factories import PN, delivery, inbound, signed
from tests.served import fetch

NO_ANSWER = 0


def send(base_url: str, key: str, to: str, idempotency_key: str, timeout: float = 30) -> int:
    """A free-form text to `to`; the HTTP status."""
    body = {"phone_number_id": PN, "to": to, "type": "text", "text": {"body": idempotency_key}}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key}
    try:
        r = httpx.post(f"{base_url}/v1/messages", json=body, headers=headers, timeout=timeout)
    except httpx.TransportError:
        return NO_ANSWER
    return r.status_code


def webhooks(base_url: str, wa_id: str, stop: threading.Event, timeout: float = 30) -> dict[str, int]:
    """Inbound messages from `wa_id`, one delivery each, until `stop` is set or the gate stops answering:
    each message's id and the status its delivery got."""
    answers: dict[str, int] = {}
    with httpx.Client(base_url=base_url, timeout=timeout) as http:
        while not stop.is_set():
            message = inbound(wa_id)
            body, headers = signed(delivery([message]))
            try:
                answers[message["id"]] = http.post(
                    "/webhooks/whatsapp", content=body, headers=headers
                ).status_code
            except httpx.TransportError:
                answers[message["id"]] = NO_ANSWER
                return answers
    return answers


def acknowledged(answers: dict[str, int]) -> list[str]:
    return [message_id for message_id, status in answers.items() if status == 200]


def stored(url: str, message_ids: list[str]) -> set[str]:
    """Those of these inbound messages the database holds."""
    rows = fetch(url, "SELECT message_id FROM inbound_messages WHERE message_id = ANY($1)", message_ids)
    return {r["message_id"] for r in rows}


def statuses(url: str) -> dict[str, str]:
    """Every send's status, by the Idempotency-Key it was made with."""
    return {
        r["idempotency_key"]: r["status"] for r in fetch(url, "SELECT idempotency_key, status FROM messages")
    }
