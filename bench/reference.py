"""The bare-stack reference: a raw ASGI app, no framework, answering the window check's URL with one
asyncpg query that does the service's index work (alias → customer → window by primary key) in one
round trip, and Meta's webhook deliveries (POST /webhooks/whatsapp) as a competent engineer would write
them by hand: the signature checked, the body parsed with orjson, then one transaction that archives the
body and applies its messages (customer found or created, message id kept, window moved forward) and its
statuses (the gate's own sends moved forward, one event each). Served by the same uvicorn, with the same
worker count, as `window-gate serve`.

    BENCH_REFERENCE_DSN=postgresql://… BENCH_APP_SECRET=… uvicorn bench.reference:app
"""

import hashlib
import hmac
import os
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from starlette.types import Receive, Scope, Send

# The service's LOOKUP without its batching (unnest of arrays, ranks of national spellings).
SQL = """
SELECT c.wa_id, c.user_id, w.last_inbound_at, w.closed_by_meta_at, w.referral_at, w.fep_started_at,
       w.fep_expires_at
FROM customer_aliases a
JOIN customers c ON c.id = a.customer_id
LEFT JOIN windows w ON w.customer_id = c.id AND w.phone_number_id = $2
WHERE a.alias = $1
"""
JSON = [(b"content-type", b"application/json")]
WEBHOOK = "/webhooks/whatsapp"
OPAQUE_PREFIX = "wg:"  # the service's biz_opaque_callback_data: "wg:<message id>"
# Statuses only move forward: the statuses each one may replace (the service's rule).
REPLACES = {
    "sent": ["pending", "unknown", "accepted"],
    "delivered": ["pending", "unknown", "accepted", "sent"],
    "read": ["pending", "unknown", "accepted", "sent", "delivered"],
    "failed": ["pending", "unknown", "accepted", "sent"],
}
# A customer is keyed on its wa_id (every message the bench sends has one); the BSUID, when Meta gives it,
# is kept with it and as a second alias.
ALIASES = "SELECT alias, customer_id FROM customer_aliases WHERE alias = ANY($1::text[])"
CREATE_CUSTOMER = """
INSERT INTO customers (wa_id, user_id) VALUES ($1, $2)
ON CONFLICT (wa_id) DO UPDATE SET user_id = COALESCE(customers.user_id, EXCLUDED.user_id)
RETURNING id
"""
ADD_ALIAS = "INSERT INTO customer_aliases (alias, customer_id, source) VALUES ($1, $2, 'webhook') ON CONFLICT DO NOTHING"
ADD_MESSAGE = """
INSERT INTO inbound_messages (message_id, phone_number_id, customer_id, type, sent_at)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING
"""
UPSERT_WINDOW = """
INSERT INTO windows AS w (phone_number_id, customer_id, last_inbound_at, last_inbound_message_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (phone_number_id, customer_id) DO UPDATE SET
  last_inbound_message_id = CASE WHEN EXCLUDED.last_inbound_at > COALESCE(w.last_inbound_at, '-infinity')
    THEN EXCLUDED.last_inbound_message_id ELSE w.last_inbound_message_id END,
  last_inbound_at = GREATEST(w.last_inbound_at, EXCLUDED.last_inbound_at),
  updated_at = now()
"""
STATUS_SET = """
UPDATE messages SET status = CASE WHEN status = ANY($2::text[]) THEN $1 ELSE status END,
  graph_message_id = COALESCE(graph_message_id, $3), pricing = COALESCE($4::jsonb, pricing), updated_at = now()
"""
STATUS_BY_ID = STATUS_SET + "WHERE id = $5 RETURNING id, phone_number_id"
STATUS_BY_WAMID = STATUS_SET + "WHERE graph_message_id = $5 RETURNING id, phone_number_id"
ADD_EVENT = "INSERT INTO message_events (message_id, phone_number_id, status, at, detail) VALUES ($1, $2, $3, $4, $5::jsonb)"
_pool: Any = None
_secret = os.environ.get("BENCH_APP_SECRET", "").encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # At most as many connections as the service's engine: pool_size 10 plus max_overflow 10.
                _pool = await asyncpg.create_pool(os.environ["BENCH_REFERENCE_DSN"], min_size=1, max_size=20)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == WEBHOOK and scope["method"] == "POST":
        await webhook(scope, receive, send)
        return
    parts = scope["path"].split("/")  # /v1/windows/{phone_number_id}/{customer}
    if len(parts) != 5 or parts[1:3] != ["v1", "windows"]:
        await answer(send, 404, {"detail": "not found"})
        return
    row = await _pool.fetchrow(SQL, parts[4], parts[3])
    await answer(send, 200, dict(row) if row else {"wa_id": parts[4], "state": "never_opened"})


async def webhook(scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive)
    signature = dict(scope["headers"]).get(b"x-hub-signature-256", b"").decode()
    expected = "sha256=" + hmac.new(_secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        await answer(send, 401, {"detail": "bad signature"})
        return
    messages, statuses = [], []
    for entry in orjson.loads(body).get("entry", ()):
        for change in entry.get("changes", ()):
            value = change.get("value", {})
            pn = value.get("metadata", {}).get("phone_number_id")
            user_ids = {c["wa_id"]: c.get("user_id") for c in value.get("contacts", ()) if c.get("wa_id")}
            for m in value.get("messages", ()):
                user_id = m.get("from_user_id") or user_ids.get(m["from"])
                at = datetime.fromtimestamp(int(m["timestamp"]), UTC)
                messages.append((m["id"], pn, m["from"], user_id, m["type"], at))
            statuses += value.get("statuses", ())
    async with _pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO webhook_deliveries (body) VALUES ($1)", body)
        if messages:
            await _messages(conn, messages)
        for s in statuses:
            await _status(conn, s)
    await answer(send, 200, {})


async def _messages(conn: Any, messages: list[tuple[str, str, str, str | None, str, datetime]]) -> None:
    """Customers by alias (created when unknown), then the message ids and the windows, in key order so
    that concurrent deliveries lock alike."""
    customers = dict(await conn.fetch(ALIASES, sorted({wa_id for _, _, wa_id, _, _, _ in messages})))
    for _, _, wa_id, user_id, _, _ in sorted(messages, key=lambda m: m[2]):
        if wa_id not in customers:
            customers[wa_id] = await conn.fetchval(CREATE_CUSTOMER, wa_id, user_id)
            for alias in (wa_id, user_id) if user_id else (wa_id,):
                await conn.execute(ADD_ALIAS, alias, customers[wa_id])
    rows = sorted((mid, pn, customers[wa_id], kind, at) for mid, pn, wa_id, _, kind, at in messages)
    await conn.executemany(ADD_MESSAGE, rows)
    windows = sorted((pn, customer_id, at, mid) for mid, pn, customer_id, _, at in rows)
    await conn.executemany(UPSERT_WINDOW, windows)


async def _status(conn: Any, s: dict[str, Any]) -> None:
    """One status: the send moved forward, found by the gate's own id else by wamid, and its event."""
    opaque = s.get("biz_opaque_callback_data") or ""
    own = UUID(opaque.removeprefix(OPAQUE_PREFIX)) if opaque.startswith(OPAQUE_PREFIX) else None
    pricing = orjson.dumps(s["pricing"]).decode() if "pricing" in s else None
    replaces = REPLACES.get(s["status"], [])
    found = await conn.fetchrow(
        STATUS_BY_ID if own else STATUS_BY_WAMID, s["status"], replaces, s["id"], pricing, own or s["id"]
    )
    if found is not None:
        at = datetime.fromtimestamp(int(s["timestamp"]), UTC)
        await conn.execute(ADD_EVENT, *found, s["status"], at, orjson.dumps(s).decode())


async def answer(send: Send, status: int, payload: object) -> None:
    """A JSON response, as bare as ASGI allows (shared by the bench's other raw servers)."""
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body
