"""The bare-stack reference: a raw ASGI app, no framework, answering the window check's URL with one
asyncpg query that does the service's index work (alias → customer → window by primary key) in one
round trip. Served by the same uvicorn, with the same worker count, as `window-gate serve`.

    BENCH_REFERENCE_DSN=postgresql://… uvicorn bench.reference:app
"""

import os
from typing import Any

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
_pool: Any = None


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
    parts = scope["path"].split("/")  # /v1/windows/{phone_number_id}/{customer}
    if len(parts) != 5 or parts[1:3] != ["v1", "windows"]:
        await answer(send, 404, {"detail": "not found"})
        return
    row = await _pool.fetchrow(SQL, parts[4], parts[3])
    await answer(send, 200, dict(row) if row else {"wa_id": parts[4], "state": "never_opened"})


async def answer(send: Send, status: int, payload: dict[str, Any]) -> None:
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
