"""What a subscriber can receive, and how each delivery is signed.

Two schemes. `meta.webhook` is Meta's delivery byte for byte, signed as Meta signs it
(`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the bytes>`, keyed by the subscription's secret string
as shown), so an existing consumer of Meta's webhooks only changes its URL and app secret. The gate's own
events are JSON signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`),
by the `standardwebhooks` package, the convention's reference implementation.
"""

import base64
import hashlib
import hmac
import secrets
from datetime import datetime

from standardwebhooks import Webhook

META_WEBHOOK = "meta.webhook"
# The gate's own events. Adding one: a row here, and the code that emits it (service.emit, or SQL in
# webhook/repository.py's INGEST for what a delivery causes); the README's catalogue shows a sample.
GATE_EVENTS = {
    "window.opened": "a customer's message opened a window that was not open",
    "window.expiring": "a window closes in EXPIRING_LEAD_SECONDS (once per window): reply now, it is still free",
    "window.closed": "a window's 24 hours passed, or Meta closed it",
    "message.status": "a message the gate sent changed status (Meta's error included when it failed)",
    "template.status": "Meta changed a template's status (approved, paused, disabled, …)",
    "message.released": "a held message left the wait after the customer's reply (sent, or failed with why)",
    "message.expired": "a held message's hold_until passed before the customer replied: never sent",
}
EVENT_TYPES = (META_WEBHOOK, *GATE_EVENTS)
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: Standard Webhooks' format, and the string Meta's scheme keys
    its HMAC with."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def headers(event_type: str, event_id: str, body: bytes, secret: str, now: datetime) -> dict[str, str]:
    """The headers of one attempt (`webhook-id` on both schemes: consumers dedupe by it)."""
    if event_type == META_WEBHOOK:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"x-hub-signature-256": f"sha256={digest}", "webhook-id": event_id}
    signature = Webhook(secret).sign(event_id, now, body.decode())
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
