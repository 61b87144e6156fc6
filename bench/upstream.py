"""A minimal, fast stand-in for Meta's Graph API send endpoint: raw ASGI, no framework, no state.

POST /{version}/{phone_number_id}/messages answers Meta's success body, echoing `to`; anything else 404.
Served by uvicorn in its own process, so that the upstream's cost stays out of the measured server's CPU:

    uvicorn bench.upstream:app --workers 1
"""

import itertools
import os
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

JSON = [(b"content-type", b"application/json")]
_ids = itertools.count(1)
_prefix = f"wamid.bench.{os.getpid()}."  # unique across workers


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    parts = scope["path"].split("/")  # /{version}/{phone_number_id}/messages
    if scope["method"] != "POST" or len(parts) != 4 or parts[3] != "messages":
        await _answer(send, 404, {"error": {"message": "Unknown path components", "code": 2500}})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    to = orjson.loads(body).get("to") or ""
    await _answer(
        send,
        200,
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"{_prefix}{next(_ids)}"}],
        },
    )


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})
