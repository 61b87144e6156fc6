"""A fast subscriber for the relay benchmarks: raw ASGI, no framework, answers every POST 200 at once.

    BENCH_RECEIVER_DIR=/tmp/… uvicorn bench.receiver:app --workers 1

Each subscription POSTs to its own path. Per path it counts what arrived, the distinct `webhook-id`s (the
relay's event id: a repeat is a second attempt at one event) and the bodies whose X-Hub-Signature-256 is
not the HMAC of their bytes under that path's secret (BENCH_RECEIVER_DIR/secrets.json, {path: secret},
read again when a path it does not know arrives), and when the first and the last arrived
(time.monotonic(), comparable across processes), and how many arrived in each tenth of a second (so that
pauses of the sender show). Each worker writes its counts to
BENCH_RECEIVER_DIR/counts-<pid>.json when it stops (`counts` adds the workers up). GET answers 200: ready.
"""

import hashlib
import hmac
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import Receive, Scope, Send

DIRECTORY = Path(os.environ.get("BENCH_RECEIVER_DIR") or ".")
OK = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
EMPTY = {"type": "http.response.body", "body": b""}


@dataclass
class Tally:
    received: int = 0
    ids: set[str] = field(default_factory=set)
    unsigned: int = 0  # no secret known for the path
    bad_signatures: int = 0
    first: float = 0.0
    last: float = 0.0
    tenths: Counter[int] = field(default_factory=Counter)  # int(time.monotonic() * 10) → requests


_paths: defaultdict[str, Tally] = defaultdict(Tally)
_secrets: dict[str, bytes] = {}


def _secret(path: str) -> bytes | None:
    if path not in _secrets:
        try:
            known = json.loads((DIRECTORY / "secrets.json").read_text())
        except (OSError, ValueError):
            known = {}
        _secrets.update({p: s.encode() for p, s in known.items()})
    return _secrets.get(path)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _dump()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST":
        now = time.monotonic()
        counts = _paths[scope["path"]]
        counts.received += 1
        counts.first = counts.first or now
        counts.last = now
        counts.tenths[int(now * 10)] += 1
        signature = event_id = b""
        for name, value in scope["headers"]:
            if name == b"x-hub-signature-256":
                signature = value
            elif name == b"webhook-id":
                event_id = value
        counts.ids.add(event_id.decode())
        secret = _secret(scope["path"])
        if secret is None:
            counts.unsigned += 1
        elif not hmac.compare_digest(
            signature, b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        ):
            counts.bad_signatures += 1
    await send(OK)
    await send(EMPTY)


def _dump() -> None:
    out = {
        path: {
            "received": c.received,
            "ids": sorted(c.ids),
            "unsigned": c.unsigned,
            "bad_signatures": c.bad_signatures,
            "first": c.first,
            "last": c.last,
            "tenths": c.tenths,
        }
        for path, c in _paths.items()
    }
    (DIRECTORY / f"counts-{os.getpid()}.json").write_text(json.dumps(out))


@dataclass
class Counts:
    """What every worker of a receiver got on one path, added up."""

    received: int = 0
    distinct: int = 0
    unsigned: int = 0
    bad_signatures: int = 0
    first: float = 0.0
    last: float = 0.0
    tenths: Counter[int] = field(default_factory=Counter)


def counts(directory: Path) -> dict[str, Counts]:
    """The counts the receiver's workers wrote when they stopped, per path, added up."""
    ids: defaultdict[str, set[str]] = defaultdict(set)
    total: defaultdict[str, Counts] = defaultdict(Counts)
    for dump in sorted(directory.glob("counts-*.json")):
        per_path: dict[str, dict[str, Any]] = json.loads(dump.read_text())
        for path, c in per_path.items():
            t = total[path]
            t.received += c["received"]
            t.unsigned += c["unsigned"]
            t.bad_signatures += c["bad_signatures"]
            t.first = min(t.first or c["first"], c["first"])
            t.last = max(t.last, c["last"])
            t.tenths.update({int(k): v for k, v in c["tenths"].items()})
            ids[path].update(c["ids"])
    for path, t in total.items():
        t.distinct = len(ids[path])
    return dict(total)


def idle_share(paths: dict[str, Counts]) -> tuple[float, float]:
    """Of the tenths of a second from the first request (any path) to the last, the share in which none
    arrived, and the longest run of them, in seconds: the sender pausing."""
    tenths: Counter[int] = Counter()
    for c in paths.values():
        tenths.update(c.tenths)
    if not tenths:
        return 0.0, 0.0
    span = range(min(tenths), max(tenths) + 1)
    idle = longest = run = 0
    for tenth in span:
        run = run + 1 if not tenths[tenth] else 0
        idle += not tenths[tenth]
        longest = max(longest, run)
    return idle / len(span), longest / 10
