"""What the request check (window_gate.inputs.InputCheck) adds to a request, in-process, no server:

    ./dev run python -m bench.inputs_overhead [--rounds 5]

For each kind of request, the best of `rounds` runs of the check around an app that only reads the body,
minus the same app alone: microseconds added per request.
"""

import argparse
import asyncio
import time
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from window_gate.errors import ValidationFailed, problem_response
from window_gate.inputs import InputCheck

HEADERS = [
    (b"host", b"gate"),
    (b"authorization", b"Bearer wg_" + b"x" * 40),
    (b"user-agent", b"bench"),
    (b"accept", b"*/*"),
]
SEND = orjson.dumps(
    {
        "phone_number_id": "106540352242922",
        "to": "+55 11 98765-4321",
        "type": "text",
        "text": {"body": "Shipped"},
    }
)
BATCH = orjson.dumps(
    {"phone_number_id": "106540352242922", "customers": [f"55119876{i:05d}" for i in range(1000)]}
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] != "GET":
        await receive()


def render(_: str, err: ValidationFailed) -> Response:
    return problem_response(err.status, err.problem())


def scope(method: str, path: str, json: bool = False) -> dict[str, Any]:
    headers = HEADERS + ([(b"content-type", b"application/json")] if json else [])
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers}


async def per_request(target: Any, request: dict[str, Any], body: bytes, n: int) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    start = time.perf_counter()
    for _ in range(n):
        await target(request, receive, None)
    return (time.perf_counter() - start) / n * 1e6


async def main(rounds: int) -> None:
    check = InputCheck(app, render, raw_bodies=["/webhooks/whatsapp"])
    cases = [
        (
            "window check GET (hot path)",
            scope("GET", "/v1/windows/106540352242922/5511987654321"),
            b"",
            100_000,
        ),
        (
            "webhook POST (hot path: body left to it)",
            scope("POST", "/webhooks/whatsapp", True),
            SEND,
            100_000,
        ),
        (f"send POST, {len(SEND)} B body", scope("POST", "/v1/messages", True), SEND, 50_000),
        (
            f"windows/check POST, 1,000 customers, {len(BATCH)} B",
            scope("POST", "/v1/windows/check", True),
            BATCH,
            2_000,
        ),
    ]
    print("| request | µs added by the check |\n|---|---|")
    for name, request, body, n in cases:
        added = min(
            [
                await per_request(check, request, body, n) - await per_request(app, request, body, n)
                for _ in range(rounds)
            ]
        )
        print(f"| {name} | {added:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
