"""The bare-stack reference for sends: a raw ASGI app, no framework. POST /send {"to": …} does what a
gated free-form send needs at the least: the window lookup by alias (one asyncpg query, as in
bench/reference.py), INSERT a record, POST upstream with one shared httpx.AsyncClient, UPDATE the
record with Meta's answer, answer 201. Served by the same uvicorn, with the same worker count, as
`window-gate serve`.

    BENCH_REFERENCE_DSN=postgresql://… BENCH_UPSTREAM_URL=http://… BENCH_PN=… uvicorn bench.reference_send:app
"""

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from starlette.types import Receive, Scope, Send

from bench.reference import SQL as LOOKUP
from bench.reference import answer, read_body

# Created by bench/run.py in the bench database.
TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_sends (id uuid PRIMARY KEY, recipient text, status text, wamid text)"
)
INSERT = "INSERT INTO bench_sends (id, recipient, status) VALUES ($1, $2, 'pending')"
UPDATE = "UPDATE bench_sends SET status = 'accepted', wamid = $2 WHERE id = $1"
WINDOW = timedelta(hours=24)
_pool: Any = None
_http: Any = None
_url = ""
_pn = ""


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _pool, _http, _url, _pn
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The service's limits: at most 20 database connections, 100 upstream ones.
                _pool = await asyncpg.create_pool(os.environ["BENCH_REFERENCE_DSN"], min_size=1, max_size=20)
                _http = httpx.AsyncClient(
                    base_url=os.environ["BENCH_UPSTREAM_URL"],
                    timeout=10.0,
                    limits=httpx.Limits(max_connections=100),
                )
                _pn = os.environ["BENCH_PN"]
                _url = f"/v25.0/{_pn}/messages"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _http.aclose()
                await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] != "POST" or scope["path"] != "/send":
        await answer(send, 404, {"detail": "not found"})
        return
    body = await read_body(receive)
    to = orjson.loads(body)["to"]
    row = await _pool.fetchrow(LOOKUP, to, _pn)
    last = row and row["last_inbound_at"]
    if not last or datetime.now(UTC) - last >= WINDOW:
        await answer(send, 409, {"code": "window_closed"})
        return
    message_id = uuid.uuid4()
    await _pool.execute(INSERT, message_id, to)
    response = await _http.post(
        _url,
        content=orjson.dumps(
            {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}
        ),
        headers={"Authorization": "Bearer bench", "Content-Type": "application/json"},
    )
    meta = orjson.loads(response.content)
    wamid = meta["messages"][0]["id"]
    await _pool.execute(UPDATE, message_id, wamid)
    await answer(send, 201, {"id": str(message_id), "graph_message_id": wamid, "status": "accepted"})
