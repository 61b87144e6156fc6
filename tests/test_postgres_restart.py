"""PostgreSQL restarted under load, on a server of the test's own: a real `window-gate serve` answers
window checks, sends and webhooks while its database is stopped and started again. While it is down the
gate fails closed (503 `database_unavailable`, never a window it cannot read); once it is back the same
process answers again within seconds; nothing it acknowledged is lost, nothing is sent twice."""

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import cli_env
from tests.factories import PN, delivery, inbound, signed
from tests.load import send, statuses, stored
from tests.postgres import OwnPostgres, own_postgres
from tests.served import admin_key, deliver_inbound, serve, wait_until
from tests.upstream import counting_meta

pytestmark = pytest.mark.slow  # `serve` and a PostgreSQL server as processes

CUSTOMER = "551187654321"
OUTAGES = (0.0, 3.0)  # seconds between stop and start: a plain restart, then a longer outage
RECOVERY_SECONDS = 10  # the bound: back to 200 this soon after PostgreSQL accepts connections again


@dataclass(frozen=True)
class Answer:
    kind: str
    key: str  # the send's Idempotency-Key, the inbound message's id
    asked: float  # monotonic
    answered: float
    status: int  # 0: no answer
    code: str | None  # a problem's code
    state: str | None  # a window's


def ask(kind: str, key: str, call: Callable[[], httpx.Response]) -> Answer:
    asked = time.monotonic()
    try:
        r = call()
    except httpx.TransportError:
        return Answer(kind, key, asked, time.monotonic(), 0, None, None)
    body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
    return Answer(kind, key, asked, time.monotonic(), r.status_code, body.get("code"), body.get("state"))


def drive(base: str, key: str, kind: str, client: int, stop: threading.Event) -> list[Answer]:
    """One client asking one kind of request over and over until `stop`."""
    answers: list[Answer] = []
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, timeout=30) as http:
        for n in range(10**6):
            if stop.is_set():
                break
            if kind == "window":
                answers.append(ask(kind, "", lambda: http.get(f"/v1/windows/{PN}/{CUSTOMER}", headers=auth)))
            elif kind == "send":
                idempotency_key, asked = f"c{client}-{n}", time.monotonic()
                status = send(base, key, CUSTOMER, idempotency_key)
                answers.append(Answer(kind, idempotency_key, asked, time.monotonic(), status, None, None))
            else:
                message = inbound(CUSTOMER)
                body, headers = signed(delivery([message]))
                answers.append(
                    ask(
                        kind,
                        message["id"],
                        functools.partial(http.post, "/webhooks/whatsapp", content=body, headers=headers),
                    )
                )
            time.sleep(0.02)
    return answers


def back(base: str, key: str) -> bool:
    """A window check answers 200 again."""
    r = httpx.get(
        f"{base}/v1/windows/{PN}/{CUSTOMER}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    return r.status_code == 200


def create_database(server: OwnPostgres) -> str:
    async def create() -> None:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute("CREATE DATABASE window_gate")
        finally:
            await conn.close()

    asyncio.run(create())
    return server.url.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + "/window_gate"


def test_a_postgres_restart_under_load_fails_closed_then_recovers_without_a_gate_restart(
    tmp_path: Path,
) -> None:
    with own_postgres() as server, counting_meta(delay=0.2) as meta:
        url = create_database(server)
        env = cli_env(
            DATABASE_URL=url, GRAPH_BASE_URL=meta.url, GRAPH_TIMEOUT_SECONDS="3", DB_TIMEOUT_SECONDS="2"
        )
        with serve(env, tmp_path / "gate.log") as gate:  # migrates the new database
            key = admin_key(url)
            base = str(gate.http.base_url).rstrip("/")
            deliver_inbound(gate.http, PN, CUSTOMER)  # the window is open: a 200 says so
            stop = threading.Event()
            outages: list[tuple[float, float]] = []
            recovered: list[float] = []
            kinds = [(kind, client) for kind in ("window", "send", "webhook") for client in range(2)]
            with ThreadPoolExecutor(len(kinds)) as pool:
                clients = [pool.submit(drive, base, key, kind, n, stop) for kind, n in kinds]
                for down in OUTAGES:
                    time.sleep(2)  # load on a healthy database first
                    server.stop()
                    stopped = time.monotonic()
                    time.sleep(down)
                    started = time.monotonic()
                    server.start()
                    outages.append((stopped, started))
                    recovered.append(wait_until(lambda: back(base, key), RECOVERY_SECONDS, "recovered"))
                time.sleep(2)
                stop.set()
                answers = [a for c in clients for a in c.result()]
            assert gate.proc.poll() is None  # the same process throughout
            # Every send that got no 201 is retried with its key, as a client would.
            unanswered = {a.key for a in answers if a.kind == "send" and a.status != 201}
            retried = {k: send(base, key, CUSTOMER, k) for k in sorted(unanswered)}
        final = statuses(url)
        acked = [a.key for a in answers if a.kind == "webhook" and a.status == 200]
        kept = stored(url, acked)

    by = Counter((a.kind, a.status, a.code) for a in answers)
    print(f"\n{len(OUTAGES)} restarts; answers {dict(by)}; back in {[round(s, 2) for s in recovered]} s")
    windows = [a for a in answers if a.kind == "window"]
    assert all(a.state == "open" for a in windows if a.status == 200)
    assert {(a.status, a.code) for a in answers if a.status not in (200, 201)} <= {
        (503, "database_unavailable"),
        (504, "upstream_timeout"),  # a send whose outcome could not be written as the database went
        (0, None),  # a send's own client (tests.load.send) keeps no code
        (503, None),
        (504, None),
    }, by
    during = [a for a in answers if any(s < a.asked and a.answered < e for s, e in outages)]
    assert during and all(a.status == 503 for a in during), Counter((a.kind, a.status) for a in during)
    assert all(took < RECOVERY_SECONDS for took in recovered)
    assert kept == set(acked)  # every delivery answered 200 is stored
    assert sum(1 for a in windows if a.status == 503) and sum(1 for a in windows if a.status == 200)
    # Sends: each key recorded once; 201 for those Meta took, 504 (unknown) only for those it may have.
    assert set(retried.values()) <= {201, 504}, retried
    arrived = Counter(s["text"]["body"] for s in meta.sends)
    assert max(arrived.values()) == 1, "a message reached Meta twice"
    assert set(arrived) <= set(final)
    assert all(arrived[k] == 1 for k, status in final.items() if status == "accepted")
    assert set(final.values()) <= {"accepted", "unknown", "pending"}
