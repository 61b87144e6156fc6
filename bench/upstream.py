"""A minimal, fast stand-in for Meta's Graph API send endpoint: raw ASGI, no framework, no state.

POST /{version}/{phone_number_id}/messages answers Meta's success body, echoing `to`; anything else 404.
Served by uvicorn in its own process, so that the upstream's cost stays out of the measured server's CPU:

    [BENCH_UPSTREAM_DELAY_MS=300] [BENCH_UPSTREAM_RECORD=1] uvicorn bench.upstream:app --workers 1

BENCH_UPSTREAM_DELAY_MS holds each answer that long (Meta's own latency is a few hundred ms), so that many
sends are in flight at once; unset, it answers at once. BENCH_UPSTREAM_RECORD keeps, for each send, when it
arrived (time.monotonic(), comparable across processes), `to`, `type` and the text's body or the template's
name; GET /records answers them as a JSON list of [at, to, type, text] in arrival order, GET /count their
number (one worker: the records are the process's).
"""

import asyncio
import itertools
import os
import time

import orjson
from starlette.types import Receive, Scope, Send

from bench.reference import answer, read_body

_ids = itertools.count(1)
_prefix = f"wamid.bench.{os.getpid()}."  # unique across workers
_delay = float(os.environ.get("BENCH_UPSTREAM_DELAY_MS") or 0) / 1000
_record = bool(os.environ.get("BENCH_UPSTREAM_RECORD"))
_records: list[tuple[float, str, str, str]] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if _record and scope["method"] == "GET" and scope["path"] in ("/records", "/count"):
        await answer(send, 200, _records if scope["path"] == "/records" else {"count": len(_records)})
        return
    parts = scope["path"].split("/")  # /{version}/{phone_number_id}/messages
    if scope["method"] != "POST" or len(parts) != 4 or parts[3] != "messages":
        await answer(send, 404, {"error": {"message": "Unknown path components", "code": 2500}})
        return
    body = await read_body(receive)
    sent = orjson.loads(body)
    to = sent.get("to") or ""
    if _record:
        kind = sent.get("type") or ""
        content = sent.get(kind) or {}
        _records.append((time.monotonic(), to, kind, content.get("body") or content.get("name") or ""))
    if _delay:
        await asyncio.sleep(_delay)
    await answer(
        send,
        200,
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"{_prefix}{next(_ids)}"}],
        },
    )
